"""The docs hold: the README stays a front door, every relative link leads somewhere, every
documented command and flag exists, and docs/flags.md is what the flags themselves make."""

from __future__ import annotations

import re
from pathlib import Path

from app.flags_doc import render
from app.settings import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
QUOTED = re.compile(r"\"(--[a-z][a-z0-9-]*)\"")
OURS = {name for action in build_parser()._actions for name in action.option_strings}
# The project's own programs, as the docs name them, and the file each is.
PROGRAM = re.compile(
    r"(python (?:-m ((?:app|benchmarks)\.[\w.]+)|(scripts/\w+\.py))|bash (scripts/\w+\.sh))"
)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _code(path: Path) -> list[str]:
    """Each line of code the page shows: its code blocks' lines and its inline code."""
    text = path.read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


def _program_file(match: re.Match) -> Path:
    module, script, shell = match.group(2), match.group(3), match.group(4)
    if module:
        base = ROOT / module.replace(".", "/")
        return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    return ROOT / (script or shell)


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    assert "bash scripts/test.sh" in readme and "python web_demo_mm.py" in readme
    # The CPU wheels come before the first install command.
    assert readme.index("download.pytorch.org/whl/cpu") < readme.index("pip install -r")
    assert (ROOT / "docs/screenshot.png").stat().st_size > 10_000


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in DOCS:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            where = (page.parent / file).resolve() if file else page
            if not where.exists() or (anchor and anchor not in _anchors(where)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def _programs_flags() -> set[str]:
    """Every flag the project's own programs (benchmarks, scripts) declare."""
    sources = [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*")]
    return {
        flag for path in sources for flag in re.findall(r'"(--[a-z][a-z0-9-]*)"', path.read_text())
    }


def test_every_documented_command_and_flag_exists():
    missing = []
    known = OURS | _programs_flags()
    # benchmarks/RESULTS.md is a record of past runs, in the words of their day: links only.
    for page in DOCS[:-1]:
        for line in _code(page):
            flags = set(FLAG.findall(line))
            program = PROGRAM.search(line)
            if "web_demo_mm.py" in line:
                missing += [f"{page.name}: {f}" for f in flags - OURS]
            elif program:
                source = _program_file(program)
                if not source.exists():
                    missing.append(f"{page.name}: {program.group(0)}")
                    continue
                # A shell script hands its flags on to the project's Python programs.
                declared = (
                    known if source.suffix == ".sh" else set(FLAG.findall(source.read_text()))
                )
                missing += [f"{page.name}: {line} {f}" for f in flags - declared]
            elif line.startswith("--") and page.name != "deploy.md":
                # A flag named alone is the app's or a benchmark's (other programs' flags:
                # deploy.md, in their command lines).
                missing += [f"{page.name}: {f}" for f in flags if f not in known]
    assert missing == [], missing


def test_the_flags_page_is_made_from_the_flags():
    assert (ROOT / "docs/flags.md").read_text() == render(), (
        "run `python -m app.flags_doc > docs/flags.md`"
    )
