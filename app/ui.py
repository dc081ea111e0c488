"""The Gradio Blocks app: layout and event wiring. Nothing here needs a model.

The chatbot's value is the one history of a browser session; gradio keeps it per session, so no
session sees another's messages or files. Every reply, from the UI or the `/chat` API, runs
through `ReplyStreamer`, which turns an engine's deltas into display messages.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr

from app.conversation import (
    box_to_user_messages,
    build_request,
    split_last_turn,
    user_messages_to_box,
)
from app.engines.base import ChatRequest, Engine, EngineError, GenerationParams, PromptInfo
from app.grounding import draw_marks, parse_marks
from app.media import Budget, MediaError, load_attachment
from app.render import format_stats, split_reasoning

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"

GENERATE = "generate"  # one concurrency group: every event that runs the model
UPDATE_INTERVAL_S = 0.04
BUSY = {"submit_btn": False, "stop_btn": "Stop"}
IDLE = {"submit_btn": "Send", "stop_btn": False}
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]


def refuse_url_fetches(component: gr.components.Component) -> gr.components.Component:
    """Make `component` refuse any file given as a URL: the app never fetches one (no SSRF).

    Gradio downloads a file whose path is an http(s) URL into its cache (its own guard stops
    private addresses only); local paths it already limits to its upload folder. The guard wraps
    the instance's own methods: a subclass would make gradio write a .pyi file beside this one.
    """

    def refuse(path: Any) -> None:
        if str(path).lower().startswith(("http://", "https://", "ftp://", "//")):
            raise gr.Error("This app does not fetch URLs: upload the file itself.")

    move = component.move_resource_to_block_cache
    async_move = component.async_move_resource_to_block_cache

    def guarded_move(url_or_file_path: Any) -> Any:
        refuse(url_or_file_path)
        return move(url_or_file_path)

    async def guarded_async_move(url_or_file_path: Any) -> Any:
        refuse(url_or_file_path)
        return await async_move(url_or_file_path)

    component.move_resource_to_block_cache = guarded_move  # type: ignore[method-assign]
    component.async_move_resource_to_block_cache = guarded_async_move  # type: ignore[method-assign]
    return component


@dataclass(frozen=True)
class UiOptions:
    title: str = "Qwen-VL Chat"
    banner: str | None = None
    max_new_tokens: int = 1024
    default_temperature: float | None = None
    default_top_p: float | None = None
    default_top_k: int | None = None
    default_repetition_penalty: float | None = None
    thinking_toggle: bool = False


@dataclass
class Reply:
    """A reply being streamed: the raw text, and what the display shows of it."""

    raw: str = ""
    prompt: PromptInfo = field(default_factory=PromptInfo)
    stats: str | None = None
    error: str | None = None
    finished: bool = False
    annotated: str | None = None  # an image with the reply's boxes drawn on it
    cleared: bool = False  # the user cleared the chat while this reply was streaming

    def answer(self) -> str:
        return split_reasoning(self.raw, self.prompt.opens_in_reasoning).answer

    def messages(self) -> list[dict]:
        split = split_reasoning(self.raw, self.prompt.opens_in_reasoning)
        out: list[dict] = []
        if split.reasoning or split.thinking:
            out.append(
                {
                    "role": "assistant",
                    "content": split.reasoning,
                    "metadata": {
                        "title": "Thinking",
                        "status": "pending" if split.thinking and not self.finished else "done",
                    },
                }
            )
        if split.answer:
            out.append({"role": "assistant", "content": split.answer})
        if self.annotated:
            out.append({"role": "assistant", "content": {"path": self.annotated}})
        if self.error:
            # In the title, so it is seen without opening anything; never sent to the model.
            out.append(
                {"role": "assistant", "content": "", "metadata": {"title": f"⚠️ {self.error}"}}
            )
        if self.stats:
            out.append(
                {
                    "role": "assistant",
                    "content": "",
                    "metadata": {"title": self.stats, "status": "done"},
                }
            )
        return out


class Cancel(threading.Event):
    """A generation's cancel event; `cleared` says the chat was cleared, not just stopped."""

    cleared = False


class SessionCancels:
    """The cancel events of the generations each browser session has running.

    Stop (and closing the tab) sets them: the engine ends generate() at its next token and the
    reply finishes normally, partial text and stats kept. Clear sets them too, marked cleared, so
    the reply's last update leaves the chat empty. (gradio's own `cancels=` would kill the event
    instead, and the page then marks the chat "Error".) Built per app, never module-level.
    """

    def __init__(self) -> None:
        self._events: dict[str, set[Cancel]] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Cancel:
        event = Cancel()
        with self._lock:
            self._events.setdefault(session, set()).add(event)
        return event

    def finish(self, session: str, event: Cancel) -> None:
        with self._lock:
            events = self._events.get(session, set())
            events.discard(event)
            if not events:
                self._events.pop(session, None)

    def cancel(self, session: str, cleared: bool = False) -> None:
        with self._lock:
            for event in self._events.get(session, ()):
                event.cleared = event.cleared or cleared
                event.set()


class ReplyStreamer:
    """Runs one request on the engine and yields the growing `Reply`; logs one line per request."""

    def __init__(self, engine: Engine, cancels: SessionCancels, output_dir: Path) -> None:
        self.engine = engine
        self.cancels = cancels
        self.output_dir = output_dir

    def annotate(self, reply: Reply, budget: Budget) -> str | None:
        """The last image of the prompt with the reply's boxes drawn, saved as PNG; or None.

        `budget` is the one the request was read with, so the image comes from the cache."""
        marks = parse_marks(reply.answer())
        if not marks or not reply.prompt.images:
            return None
        ref = reply.prompt.images[-1]
        try:
            visuals = load_attachment(
                ref.attachment.path,
                budget,
                self.engine.media_cache,
                ref.attachment.name,
            )
            image = visuals[ref.index][1]
            drawn = draw_marks(image, marks, self.engine.family, ref.input_size)
            with tempfile.NamedTemporaryFile(
                dir=self.output_dir, prefix="boxes-", suffix=".png", delete=False
            ) as out:
                drawn.save(out, format="PNG")
            return out.name
        except (MediaError, OSError, IndexError) as err:  # the reply stands without a drawing
            log.warning("could not draw boxes on %s: %s", ref.attachment.name, err)
            return None

    def __call__(self, request: ChatRequest, session: str) -> Iterator[Reply]:
        reply = Reply()
        cancel = self.cancels.start(session)
        started = time.perf_counter()
        attachments = sum(len(t.attachments) for t in request.turns)
        usage = None
        outcome = "ok"
        try:
            shown_at = 0.0
            for delta in self.engine.stream(request, cancel):
                if delta.prompt is not None:
                    reply.prompt = delta.prompt
                if delta.text:
                    reply.raw += delta.text
                    # At most one update per UPDATE_INTERVAL_S (the first at once): each update
                    # costs the server work that holds the GIL the generation thread needs, and
                    # eyes see no difference past ~25 updates a second. Text held back goes out
                    # with the next token or the final update.
                    now = time.perf_counter()
                    if now - shown_at >= UPDATE_INTERVAL_S:
                        shown_at = now
                        yield reply
                if delta.usage is not None:
                    usage = delta.usage
                    reply.stats = format_stats(delta.usage)
            reply.cleared = cancel.cleared
            if cancel.is_set():
                outcome = "stopped"
                reply.stats = f"{reply.stats} · stopped" if reply.stats else "stopped"
            reply.annotated = self.annotate(reply, request.budget or self.engine.budget)
            reply.finished = True
            yield reply
        except EngineError as err:
            outcome = "error"
            reply.error = str(err)
            reply.finished = True
            yield reply
        except Exception as err:  # a bug or an input nobody foresaw: still a message
            log.exception("request failed unexpectedly")
            outcome = "error"
            reply.error = f"Something went wrong on the server: {type(err).__name__}: {err}"
            reply.finished = True
            yield reply
        except GeneratorExit:
            outcome = "stopped"
            raise
        finally:
            cancel.set()
            self.cancels.finish(session, cancel)
            log.info(
                "request session=%s attachments=%d tokens_in=%s tokens_out=%s time=%.2fs %s",
                session[:8],
                attachments,
                usage.prompt_tokens if usage else "-",
                usage.completion_tokens if usage else "-",
                time.perf_counter() - started,
                outcome,
            )


def _params(
    max_new_tokens: float | None,
    temperature: float | None,
    top_p: float | None,
    top_k: float | None,
    repetition_penalty: float | None,
    seed: float | None = None,
    enable_thinking: bool | None = None,
) -> GenerationParams:
    def num(value: float | None, kind: type) -> Any:
        return None if value is None or value == "" else kind(value)

    return GenerationParams(
        max_new_tokens=num(max_new_tokens, int),
        temperature=num(temperature, float),
        top_p=num(top_p, float),
        top_k=num(top_k, int),
        repetition_penalty=num(repetition_penalty, float),
        seed=None if seed is None or seed < 0 else int(seed),
        enable_thinking=enable_thinking,
    )


def _budget(
    base: Budget, max_pixels: float | None, fps: float | None, frames: float | None
) -> Budget:
    """The engine's media budget with the panel's choices applied (within valid bounds)."""
    changes: dict[str, Any] = {}
    if max_pixels:
        changes["max_pixels"] = max(base.min_pixels, int(max_pixels))
    if fps:
        changes["video_fps"] = float(fps)
    if frames:
        changes["video_max_frames"] = max(base.video_min_frames, int(frames))
    return replace(base, **changes)


def _session(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "-"


def build_demo(engine: Engine, options: UiOptions) -> gr.Blocks:
    cancels = SessionCancels()
    streamer = ReplyStreamer(engine, cancels, Path(tempfile.mkdtemp(prefix="qwen-chat-")))

    def stop(request: gr.Request) -> Any:
        cancels.cancel(_session(request))
        return gr.MultimodalTextbox(**IDLE)

    def stream_into(history: list, request: ChatRequest, session: str) -> Iterator[list]:
        for reply in streamer(request, session):
            yield [] if reply.cleared else history + reply.messages()

    def panel_request(
        history: list,
        system_prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        top_k: float,
        repetition_penalty: float,
        seed: float,
        thinking: bool,
        max_pixels: float,
        video_fps: float,
        video_max_frames: float,
    ) -> ChatRequest:
        """The request the settings panel asks for, for `history`."""
        params = _params(
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            thinking if options.thinking_toggle else None,
        )
        budget = _budget(engine.budget, max_pixels, video_fps, video_max_frames)
        return build_request(history, system_prompt, params, budget)

    # respond and regenerate spell out the panel's inputs: gradio names the API's parameters
    # after them and passes gr.Request by the annotation.
    def respond(
        box: dict | None,
        history: list | None,
        system_prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        top_k: float,
        repetition_penalty: float,
        seed: float,
        thinking: bool,
        max_pixels: float,
        video_fps: float,
        video_max_frames: float,
        request: gr.Request,
    ) -> Iterator[tuple[Any, list]]:
        history = list(history or [])
        new = box_to_user_messages(box)
        if not new:
            yield gr.skip(), history
            return
        history += new
        # The box empties only now that its content is safe in the history; Stop replaces Send.
        yield gr.MultimodalTextbox(value={"text": "", "files": []}, **BUSY), history
        chat = panel_request(
            history, system_prompt, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, seed, thinking, max_pixels, video_fps, video_max_frames,
        )  # fmt: skip
        for shown in stream_into(history, chat, _session(request)):
            yield gr.skip(), shown

    def regenerate(
        history: list | None,
        system_prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        top_k: float,
        repetition_penalty: float,
        seed: float,
        thinking: bool,
        max_pixels: float,
        video_fps: float,
        video_max_frames: float,
        request: gr.Request,
    ) -> Iterator[tuple[list, Any]]:
        before, last_turn = split_last_turn(list(history or []))
        if not last_turn:
            yield gr.skip(), gr.skip()
            return
        history = before + last_turn
        # Stop shows once the work starts (not while queued), when pressing it can reach it.
        yield history, gr.MultimodalTextbox(**BUSY)
        chat = panel_request(
            history, system_prompt, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, seed, thinking, max_pixels, video_fps, video_max_frames,
        )  # fmt: skip
        for shown in stream_into(history, chat, _session(request)):
            yield shown, gr.skip()

    def undo(history: list | None) -> tuple[list, Any]:
        before, last_turn = split_last_turn(list(history or []))
        if not last_turn:
            return before, gr.skip()
        # What the user typed and attached comes back into the box: nothing is lost.
        return before, user_messages_to_box(last_turn)

    def chat_api(
        message: dict | None = None,
        system_prompt: str | None = None,
        max_new_tokens: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: float | None = None,
        repetition_penalty: float | None = None,
        enable_thinking: float | None = None,
        seed: float | None = None,
        request: gr.Request = None,  # type: ignore[assignment] - gradio fills it in
    ) -> Iterator[str]:
        history = box_to_user_messages(message)
        if not history:
            raise gr.Error("The message is empty: send text, files, or both.")
        thinking = None if enable_thinking is None else bool(enable_thinking)
        params = _params(
            max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, thinking
        )
        answer = ""
        for reply in streamer(build_request(history, system_prompt, params), _session(request)):
            if reply.error:
                raise gr.Error(reply.error, print_exception=False)
            answer = reply.answer()
            yield answer
        yield answer

    with gr.Blocks(title=options.title, fill_height=True) as demo:
        gr.Markdown(f"## {options.title}")
        if options.banner:
            gr.Markdown(f"**{options.banner}**", elem_id="banner")
        chatbot = gr.Chatbot(
            label="Chat",
            elem_id="chatbot",
            height=560,
            latex_delimiters=LATEX,
            sanitize_html=True,
            render_markdown=True,
        )
        box = gr.MultimodalTextbox(
            placeholder="Ask about your images and videos (drop, paste or upload several)",
            file_count="multiple",
            file_types=["image", "video", ".pdf"],
            sources=["upload"],
            show_label=False,
            elem_id="input",
            **IDLE,
        )
        if EXAMPLES.is_dir():
            gr.Examples(
                examples=[
                    {
                        "text": "Which quarter sold the most, and how much?",
                        "files": [str(EXAMPLES / "chart.png")],
                    },
                    {
                        "text": "Read the receipt: what is the total and what was bought?",
                        "files": [str(EXAMPLES / "receipt.png")],
                    },
                    {
                        "text": "Outline every item on the receipt with a box.",
                        "files": [str(EXAMPLES / "receipt.png")],
                    },
                    {
                        "text": "What happens in this clip, and when?",
                        "files": [str(EXAMPLES / "ball.mp4")],
                    },
                ],
                inputs=[box],
                label="Examples (click one to fill the box)",
                examples_per_page=4,
            )
        with gr.Row():
            regenerate_btn = gr.Button("Regenerate", elem_id="regenerate", size="sm")
            undo_btn = gr.Button("Undo last turn", elem_id="undo", size="sm")
            clear_btn = gr.Button("Clear", elem_id="clear", size="sm")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            system_prompt = gr.Textbox(label="System prompt", lines=2, elem_id="system_prompt")
            with gr.Row():
                max_new_tokens = gr.Slider(
                    1,
                    options.max_new_tokens,
                    value=options.max_new_tokens,
                    step=1,
                    label="Max new tokens",
                    elem_id="max_new_tokens",
                )
                temperature = gr.Slider(
                    0.0,
                    2.0,
                    value=options.default_temperature
                    if options.default_temperature is not None
                    else 0.7,
                    step=0.05,
                    label="Temperature (0 = greedy)",
                )
                top_p = gr.Slider(
                    0.05,
                    1.0,
                    value=options.default_top_p if options.default_top_p is not None else 1.0,
                    step=0.05,
                    label="Top-p",
                )
            with gr.Row():
                top_k = gr.Slider(
                    0,
                    200,
                    value=options.default_top_k if options.default_top_k is not None else 50,
                    step=1,
                    label="Top-k (0 = off)",
                )
                repetition_penalty = gr.Slider(
                    1.0,
                    2.0,
                    value=options.default_repetition_penalty
                    if options.default_repetition_penalty is not None
                    else 1.0,
                    step=0.01,
                    label="Repetition penalty",
                )
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                base = engine.budget
                max_pixels = gr.Slider(
                    base.min_pixels,
                    max(base.max_pixels, 4096 * 28 * 28),
                    value=base.max_pixels,
                    step=28 * 28,
                    label="Max pixels per image (lower it if memory runs out)",
                    elem_id="max_pixels",
                )
                video_fps = gr.Slider(
                    0.25, 8.0, value=base.video_fps, step=0.25, label="Video frames per second"
                )
                video_max_frames = gr.Slider(
                    base.video_min_frames,
                    max(base.video_max_frames, 256),
                    value=base.video_max_frames,
                    step=2,
                    label="Max video frames",
                )
            thinking = gr.Checkbox(
                value=True,
                label="Thinking (models whose template takes enable_thinking)",
                visible=options.thinking_toggle,
            )
        settings = [
            system_prompt,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            thinking,
            max_pixels,
            video_fps,
            video_max_frames,
        ]

        # The browser's own events are "undocumented": off the API page, but a script (and the
        # tests) can drive a multi-turn session exactly as the page does.
        send_event = box.submit(
            respond,
            [box, chatbot, *settings],
            [box, chatbot],
            api_name="ui_send",
            api_visibility="undocumented",
            concurrency_limit=1,
            concurrency_id=GENERATE,
        )
        regen_event = regenerate_btn.click(
            regenerate,
            [chatbot, *settings],
            [chatbot, box],
            api_name="ui_regenerate",
            api_visibility="undocumented",
            concurrency_limit=1,
            concurrency_id=GENERATE,
        )
        for event in (send_event, regen_event):  # runs after success, failure or Stop alike
            event.then(
                lambda: gr.MultimodalTextbox(**IDLE),
                None,
                box,
                queue=False,
                api_visibility="private",
            )
        # Stop sets this session's cancel events: generate() ends at its next token and the
        # reply finishes as usual, partial text and stats kept (no "cancelled" event state).
        box.stop(stop, None, box, api_visibility="private", queue=False)

        # A closed tab stops its generation the same way.
        def on_unload(request: gr.Request) -> None:
            cancels.cancel(_session(request))

        demo.unload(on_unload)
        undo_btn.click(
            undo,
            [chatbot],
            [chatbot, box],
            api_name="ui_undo",
            api_visibility="undocumented",
            queue=False,
        )

        def clear(request: gr.Request) -> tuple[list, Any]:
            cancels.cancel(_session(request), cleared=True)
            return [], gr.MultimodalTextbox(**IDLE)

        clear_btn.click(clear, None, [chatbot, box], api_visibility="private", queue=False)

        # The scripting API: hidden components give `/chat` its typed, upload-checked inputs.
        with gr.Column(visible=False):
            api_message = gr.MultimodalTextbox(file_count="multiple", label="message")
            api_system = gr.Textbox(value=None, label="system_prompt")
            api_numbers = [
                gr.Number(value=None, label=name)
                for name in (
                    "max_new_tokens",
                    "temperature",
                    "top_p",
                    "top_k",
                    "repetition_penalty",
                )
            ]
            # A Number, not a Checkbox: a Checkbox turns "not given" into False, and not given
            # must mean "as the chat template decides". true/false arrive as 1.0/0.0.
            api_thinking = gr.Number(value=None, label="enable_thinking")
            api_seed = gr.Number(value=None, label="seed")
            api_reply = gr.Textbox(label="reply")
            api_trigger = gr.Button(visible=False)
        api_trigger.click(
            chat_api,
            [api_message, api_system, *api_numbers, api_thinking, api_seed],
            [api_reply],
            api_name="chat",
            concurrency_limit=1,
            concurrency_id=GENERATE,
        )
        for component in (chatbot, box, api_message):
            refuse_url_fetches(component)
    return demo
