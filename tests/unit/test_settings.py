from dataclasses import fields

import pytest

from app.main import budget_of
from app.media import CPU_MAX_PIXELS, Budget
from app.media.limits import knobs
from app.settings import DEFAULT_CHECKPOINT, SettingsError, build_parser, load_settings
from app.ui.panel import FIELDS, PanelOptions, request_settings


def test_defaults():
    settings = load_settings([], environ={})
    assert settings.local.checkpoint_path == DEFAULT_CHECKPOINT
    assert settings.web.server_name == "127.0.0.1" and settings.web.server_port == 7860
    assert not settings.local.load_in_4bit and not settings.local.cpu_only


def test_official_demo_flags_are_kept():
    settings = load_settings(
        [
            "-c", "/models/q", "--cpu-only", "--flash-attn2", "--share", "--inbrowser",
            "--server-port", "9000", "--server-name", "0.0.0.0", "--load-in-4bit",
            "--max-new-tokens", "77",
        ],
        environ={},
    )  # fmt: skip
    assert settings.local.checkpoint_path == "/models/q"
    assert (
        settings.local.cpu_only
        and settings.local.flash_attn2
        and settings.web.share
        and settings.web.inbrowser
    )
    assert settings.web.server_port == 9000 and settings.web.server_name == "0.0.0.0"
    assert settings.local.load_in_4bit and settings.max_new_tokens == 77


def test_environment_variables_and_flag_precedence():
    env = {
        "QWEN_DEMO_CHECKPOINT_PATH": "/env/model",
        "QWEN_DEMO_LOAD_IN_4BIT": "true",
        "QWEN_DEMO_SERVER_PORT": "8080",
        "QWEN_DEMO_VIDEO_FPS": "1.5",
    }
    settings = load_settings([], environ=env)
    assert settings.local.checkpoint_path == "/env/model"
    assert settings.local.load_in_4bit and settings.web.server_port == 8080
    assert budget_of(settings).video_fps == 1.5
    assert load_settings(["--server-port", "1234"], environ=env).web.server_port == 1234


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--max-new-tokens", "0"], {}),
        (["--min-pixels", "100", "--max-pixels", "10"], {}),
        ([], {"QWEN_DEMO_LOAD_IN_4BIT": "maybe"}),
        ([], {"QWEN_DEMO_SERVER_PORT": "eighty"}),
        (["--video-min-frames", "9", "--video-max-frames", "4"], {}),
        (["--max-concurrent", "0"], {}),
        (["--server-silence-s", "0"], {}),
    ],
)
def test_invalid_values_are_refused_with_a_message(argv, env):
    with pytest.raises(SettingsError) as info:
        load_settings(argv, environ=env)
    assert str(info.value)


def test_every_flag_has_an_environment_variable_in_the_help():
    assert "QWEN_DEMO_" in build_parser().format_help()


def test_gradio_and_spaces_variables_are_honoured_below_our_own():
    spaces = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    settings = load_settings([], environ=spaces)
    assert settings.web.server_name == "0.0.0.0" and settings.web.server_port == 7861
    ours = load_settings([], environ=spaces | {"QWEN_DEMO_SERVER_NAME": "127.0.0.1"})
    assert ours.web.server_name == "127.0.0.1"


def test_logins_from_flags_and_a_file(tmp_path):
    from app.settings import logins

    users = tmp_path / "users"
    users.write_text("# comment\ncarol:pw3\n\n")
    settings = load_settings(["--auth", "a:pw1,b:pw:2", "--auth-file", str(users)], environ={})
    assert logins(settings) == [("a", "pw1"), ("b", "pw:2"), ("carol", "pw3")]
    with pytest.raises(SettingsError):
        load_settings(["--auth", "nopassword"], environ={})
    with pytest.raises(SettingsError):
        load_settings(["--auth-file", str(tmp_path / "missing")], environ={})


def test_openai_backend_needs_a_url():
    with pytest.raises(SettingsError, match="--api-base"):
        load_settings(["--backend", "openai"], environ={})
    settings = load_settings(
        [], environ={"QWEN_DEMO_BACKEND": "openai", "QWEN_DEMO_API_BASE": "http://h:8000/v1"}
    )
    assert settings.backend == "openai" and settings.remote.api_base == "http://h:8000/v1"


def test_every_budget_field_has_a_flag_and_a_variable_that_reach_the_budget():
    # Budget alone declares them: a value for each field, by flag and by environment.
    odd = {f.name: f.default * 2 for f in fields(Budget)}
    flags = [part for name, value in odd.items() for part in (_flag(name), str(value))]
    assert budget_of(load_settings(flags, environ={})) == Budget(**odd)
    env = {f"QWEN_DEMO_{name.upper()}": str(value) for name, value in odd.items()}
    assert budget_of(load_settings([], environ=env)) == Budget(**odd)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_each_budget_field_below_its_least_value_is_refused_by_its_flag_name():
    for name, (knob, default) in knobs().items():
        too_small = type(default)(knob.least / 2) if knob.least < 1 else 0
        with pytest.raises(SettingsError, match=_flag(name)):
            load_settings([_flag(name), str(too_small)], environ={})


def test_the_cpu_image_budget_applies_only_where_no_max_pixels_is_given():
    assert budget_of(load_settings([], environ={}), on_cpu=True).max_pixels == CPU_MAX_PIXELS
    given = load_settings(["--max-pixels", "500000"], environ={})
    assert budget_of(given, on_cpu=True).max_pixels == 500000
    # A floor above the CPU's ceiling lifts the ceiling to it (not an impossible budget).
    high_floor = load_settings(["--min-pixels", "600000"], environ={})
    assert budget_of(high_floor, on_cpu=True).max_pixels == 600000


def test_the_panel_offers_exactly_the_budget_fields_whose_knob_says_so():
    offered = {f.name for f in FIELDS if f.target == "budget"}
    assert offered == {name for name, (knob, _) in knobs().items() if knob.panel}
    launch = Budget(video_fps=1.0, max_pixels=50_000)
    options = PanelOptions(budget=launch)
    # Nothing asked: the launch budget; asked beyond a slider: its bound.
    assert request_settings({}, options).budget == launch
    asked = request_settings({"video_fps": 100, "video_max_frames": 1}, options).budget
    assert asked.video_fps == 8.0 and asked.video_max_frames == launch.video_min_frames


def test_the_serving_engines_bounds_reach_the_engine():
    from app.main import build_openai_engine

    settings = load_settings(
        [
            "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--model", "qwen",
            "--max-concurrent", "5", "--server-first-token-s", "30", "--server-silence-s", "7",
            "--server-reply-s", "90",
        ],
        environ={"QWEN_DEMO_SERVER_SILENCE_S": "8"},
    )  # fmt: skip
    engine = build_openai_engine(settings)  # a model name given: nothing asked of the server
    assert engine.max_concurrent == 5
    d = engine.deadlines
    assert (d.first_token_s, d.silence_s, d.total_s) == (30, 7, 90)
    assert load_settings([], environ={}).remote.max_concurrent == 32


def test_each_group_declares_a_flag_for_each_of_its_fields_and_no_other():
    from app.settings import FLAG_GROUPS, GROUP_CLASSES, Settings

    for _, group, flags in FLAG_GROUPS:
        declared = {next(n for n in names if n.startswith("--")) for names, _ in flags}
        if group == "budget":
            wanted = {_flag(f.name) for f in fields(Budget)}
        elif group is None:
            own = [f.name for f in fields(Settings) if f.name != "budget_values"]
            wanted = {_flag(name) for name in own if name not in GROUP_CLASSES}
        else:
            wanted = {_flag(f.name) for f in fields(GROUP_CLASSES[group])}
        assert declared == wanted, group
