"""The prefix-cache protocol of one request: start from the longest cached prefix of its prompt,
read the rest (the reply's first token picked from it), and, once the reply is decoded (in a
batch: batch.py), leave what the model read for the next request.

Attention caches are cut back to any length; a state that cannot be cut (Qwen3.5's linear
attention) is read in steps, with a copy (a mark) kept where a later prompt may leave this one.
A prefill stopped between layers puts back what the cache held before it, never half a read.
"""

from __future__ import annotations

import logging
from typing import Any

from app.engines.local.generation import kv
from app.engines.local.generation.batch import Row
from app.engines.local.generation.calls import Job, ModelCalls
from app.engines.local.generation.prefix_cache import PrefixCache, Reuse
from app.engines.local.generation.prompt import Prompt
from app.engines.local.generation.watch import Cancelled

log = logging.getLogger(__name__)


class CachedGeneration:
    """Requests run on `calls`, through `prefix_cache`."""

    def __init__(self, calls: ModelCalls, prefix_cache: PrefixCache, answer_start_id: int) -> None:
        self.calls = calls
        self.prefix_cache = prefix_cache
        self._answer_start_id = answer_start_id

    def start(self, job: Job) -> Row:
        """Read `job`'s prompt from where the prefix cache leaves it; its reply's row, with the
        first token picked and handed to its streamer. Call under `torch.inference_mode`."""
        prompt, owner = job.prompt, job.request.owner
        reuse = self.prefix_cache.take(prompt.ids, prompt.media, owner)
        job.cached_tokens = reuse.tokens
        _log_reuse(prompt, reuse)
        marks = dict(reuse.marks)
        try:
            features = self.calls.encode_media(prompt, reuse.tokens)
            if not kv.is_cuttable(reuse.cache):
                features = self._read_to_marks(prompt, reuse, features, marks)
            logits = self.calls.read(prompt, reuse.cache, features)
        except Cancelled:
            self._keep_what_was_read(prompt, reuse, marks, owner)
            raise
        sampler = self.calls.sampler(job)
        row = Row(
            job, reuse.cache, marks, sampler, self.calls.streamer(job), self.calls.rope_offset()
        )
        row.tokens_held = len(prompt.ids) + sampler.plan.max_new_tokens
        self.advance(row, logits)
        return row

    def max_new_tokens(self, job: Job) -> int:
        return job.request.params.bounded_max_new_tokens(self.calls.max_new_tokens)

    def advance(self, row: Row, logits: Any) -> None:
        """The row's next token, picked from `logits` and streamed."""
        row.streamer.put_token(row.sampler.pick(logits))

    def finish(self, row: Row) -> None:
        """The reply is over: its text flushed, what the model read kept for the next request."""
        row.streamer.end()
        job = row.job
        cached = kv.length(row.cache) if kv.is_cuttable(row.cache) else len(row.sampler.ids) - 1
        ids = tuple(row.sampler.ids[:cached])
        self.prefix_cache.put(ids, job.prompt.media, row.cache, row.marks, job.request.owner)

    def _read_to_marks(self, prompt: Prompt, reuse: Reuse, features: Any, marks: kv.Marks) -> Any:
        """For a state that cannot be cut back: read up to where a later prompt may leave this
        one, keeping a copy of the state there: the start of the answer's turn (Thinking
        templates drop earlier reasoning after it; an edited question leaves before it) and the
        last prompt token (Regenerate). Returns the media features still to read (none)."""
        for stop_at in (self._answer_start(prompt.ids), len(prompt.ids) - 1):
            if stop_at > kv.length(reuse.cache):
                self.calls.read(prompt, reuse.cache, features, stop_at=stop_at)
                marks[stop_at] = kv.mark(reuse.cache)
                features = None
        return features

    def _keep_what_was_read(
        self, prompt: Prompt, reuse: Reuse, marks: kv.Marks, owner: str
    ) -> None:
        """A prefill stopped between layers leaves the cache half-written: cut it back to what
        it held before (where the cache allows that) and keep it."""
        if reuse.tokens and kv.is_cuttable(reuse.cache):
            kv.cut(reuse.cache, reuse.tokens, marks)
            self.prefix_cache.put(
                prompt.ids[: reuse.tokens], prompt.media, reuse.cache, marks, owner
            )

    def _answer_start(self, ids: tuple[int, ...]) -> int:
        """Where the answer's turn starts: the last `<|im_start|>` of the prompt."""
        for index in range(len(ids) - 1, -1, -1):
            if ids[index] == self._answer_start_id:
                return index
        return len(ids) - 1


def _log_reuse(prompt: Prompt, reuse: Reuse) -> None:
    if reuse.matched_length and reuse.tokens < reuse.shared:
        log.info(
            "prefix cache: the prompt shares %d tokens with a cached one of %d; reused %d "
            "(the cache can be cut back only there)",
            reuse.shared,
            reuse.matched_length,
            reuse.tokens,
        )
    elif reuse.matched_length and reuse.shared < reuse.matched_length:
        log.info(
            "prefix cache: the prompt leaves a cached sequence of %d tokens at token %d (an "
            "edited turn, or a template that drops earlier reasoning); reused %d of %d",
            reuse.matched_length,
            reuse.shared,
            reuse.tokens,
            len(prompt.ids),
        )
