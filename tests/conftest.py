"""Shared fixtures: tiny random checkpoints (built once per run) and media made by the tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("httpx").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(family, suppress_eos=False) -> path of a checkpoint built once per run."""
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder, build_tiny_checkpoint

    built: dict[tuple[str, bool], Path] = {}

    def get(family: str = "qwen3_vl", suppress_eos: bool = False) -> Path:
        """`family` is a tiny family, or real-instruct / real-thinking: tiny widths with the
        released Qwen3-VL-2B tokenizer, templates and processors (assets/realcfg)."""
        key = (family, suppress_eos)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{family}{'-long' if suppress_eos else ''}")
            if family.startswith("real-"):
                source = REAL_CONFIGS / f"Qwen3-VL-2B-{family.removeprefix('real-').title()}"
                built[key] = build_from_config_folder(source, folder, suppress_eos=suppress_eos)
            else:
                built[key] = build_tiny_checkpoint(folder, family, suppress_eos=suppress_eos)
        return built[key]

    return get


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """A folder of media made by the tests: images, a video, a GIF, a PDF."""
    from tests import media_factory as mf

    folder = tmp_path_factory.mktemp("media")
    mf.make_image(folder / "red.jpg", size=(640, 480), color="red")
    mf.make_image(folder / "green.png", size=(300, 500), color="green", fmt="PNG")
    mf.make_video(folder / "clip.mp4", seconds=3, fps=10)
    mf.make_gif(folder / "anim.gif")
    mf.make_pdf(folder / "doc.pdf", pages=3)
    return folder
