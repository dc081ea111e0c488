"""The settings panel's values as the page sends them, in the order its endpoints take them."""

from app.ui.panel import FIELD_NAMES, FIELDS, PanelOptions

# What the tests' pages show (their apps run with small budgets of max new tokens).
PAGE = {
    "system_prompt": "",
    "max_new_tokens": 16,
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 50,
    "repetition_penalty": 1.0,
    "seed": -1,
    "max_pixels": 1003520,
    "video_fps": 2.0,
    "video_max_frames": 64,
    "enable_thinking": False,
}


def panel(**changes) -> list:
    """The page's panel values with `changes`, positionally, as `/ui_send` takes them."""
    values = PAGE | changes
    assert set(values) == set(FIELD_NAMES), set(values) ^ set(FIELD_NAMES)
    return [values[name] for name in FIELD_NAMES]


def api_data(message: dict, history: list | None = None, **fields) -> list:
    """The `data` of a raw REST call to `/chat`: fields not given are None (as the checkpoint
    says)."""
    return [message, history, *(fields.get(name) for name in FIELD_NAMES)]


def page_defaults(options: PanelOptions) -> dict:
    """The value of every field as a page built with `options` first shows it."""
    return {f.name: f.make(options).get("value") for f in FIELDS if f.widget != "text"} | {
        "system_prompt": ""
    }
