"""docs/flags.md, made from the flags themselves (app/settings.py and the media budget's knobs).

    python -m app.flags_doc > docs/flags.md

tests/unit/test_docs.py checks that the file is what this prints, so a flag added, removed or
reworded without the page made again fails the tests.
"""

from __future__ import annotations

from app.settings import ENV_ALIASES, ENV_PREFIX, FLAG_GROUPS, Flag

INTRO = f"""# Flags and environment variables

Every flag can also be set by an environment variable `{ENV_PREFIX}<FLAG>` (for Docker and
Spaces); a flag on the command line wins. {", ".join(f"`{v}`" for v in ENV_ALIASES.values())}
(set by Hugging Face Spaces and many Docker setups) count too, below the `{ENV_PREFIX}` names.
Boolean variables take `1/0`, `true/false`, `yes/no`. A value that cannot work stops the app with
one line (`error: ...`) before anything loads.

This page is made from the flags themselves (`python -m app.flags_doc > docs/flags.md`);
`python web_demo_mm.py --help` prints the same.
"""


def _row(flag: Flag) -> str:
    names, options = flag
    long = next(name for name in names if name.startswith("--"))
    metavar = options.get("metavar")
    shown = ", ".join(f"`{name}{' ' + metavar if metavar else ''}`" for name in names)
    variable = f"`{ENV_PREFIX}{long[2:].replace('-', '_').upper()}`"
    choices = options.get("choices")
    text = options.get("help", "").replace("|", "\\|")
    if choices:
        text += " (one of " + ", ".join(f"`{choice}`" for choice in choices) + ")"
    return f"| {shown} | {variable} | {text} |"


def render() -> str:
    parts = [INTRO]
    for title, _, flags in FLAG_GROUPS:
        parts.append(f"## {title}\n")
        parts.append("| flag | environment variable | what it does |")
        parts.append("| --- | --- | --- |")
        parts.extend(_row(flag) for flag in flags)
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
