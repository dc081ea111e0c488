"""Hostile input, round three, at the level of the functions that decide: whose turn an
address takes, what an import of a crafted file leaves behind, what a script's settings become,
and the folders of files the app makes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from app import chats
from app.files import Folder
from app.settings import SettingsError, load_settings, trusted_networks
from app.ui.handlers import user_of
from app.ui.panel import PanelError, PanelOptions, request_settings
from app.ui.saved import SavedChats
from app.ui.sealed import StoreSeal


def _request(host: str, forwarded: str | None = None) -> SimpleNamespace:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    return SimpleNamespace(username=None, client=SimpleNamespace(host=host), headers=headers)


def test_forwarded_addresses_count_only_from_the_proxies_the_operator_names():
    # Before: any private-network peer was believed, so one user posing as five took five turns.
    poses = {user_of(_request("10.0.0.7", f"198.51.100.{i}")) for i in range(5)}
    assert poses == {"address:10.0.0.7"}
    trusted = trusted_networks(load_settings(["--trusted-proxies", "10.0.0.0/8"], environ={}))
    # The address the proxy itself saw is the last it appended; earlier ones the client wrote.
    seen = user_of(_request("10.0.0.7", "203.0.113.9, 198.51.100.4"), trusted)
    assert seen == "address:198.51.100.4"
    assert user_of(_request("192.0.2.1", "198.51.100.4"), trusted) == "address:192.0.2.1"
    with pytest.raises(SettingsError, match="--trusted-proxies: 'nowhere' is no address"):
        load_settings(["--trusted-proxies", "nowhere"], environ={})


def test_a_scripts_settings_stay_within_the_panels_bounds():
    options = PanelOptions()
    budget = request_settings(
        {"max_pixels": 1e12, "video_fps": 1e5, "video_max_frames": 1e5}, options
    ).budget
    assert budget.max_pixels == options.budget.max_pixels
    assert budget.video_fps == 8.0 and budget.video_max_frames == 256
    for bad in (float("nan"), float("inf"), "lots"):
        with pytest.raises(PanelError, match="Setting 'Temperature"):
            request_settings({"temperature": bad}, options)


@pytest.fixture()
def saved(tmp_path):
    return SavedChats(StoreSeal("test secret"), Folder(tmp_path / "saved"))


def _import(saved: SavedChats, path) -> tuple:
    return saved.import_json(str(path), "", gr.Request(session_hash="probe"))


def test_a_deeply_nested_import_is_refused_in_words_and_leaves_no_file(saved, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    # Outside a page gradio's warning is Python's; on the page it is the words of a toast, and
    # every output is left as it was (no bare "Error" badge: tests/browser/test_browser_chats.py).
    with pytest.warns(UserWarning, match=r"deep.json: not a conversation .*nested too deeply"):
        outputs = _import(saved, deep)
    assert outputs == (gr.skip(), gr.skip(), gr.skip())
    broken = tmp_path / "broken.json"
    document = {
        "format": chats.FORMAT,
        "title": "t",
        "messages": [
            {"role": "user", "content": [{"type": "file", "name": "a.png", "data": "aGk="}]},
            {"role": "user", "content": [{"type": "file", "name": "b.png", "data": "%%"}]},
        ],
    }
    broken.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match=r"broken\.json: not a conversation.*Export JSON"):
        _import(saved, broken)
    # Before: the first file stayed on the server after the import failed.
    assert [p for p in saved.folder.path.rglob("*") if p.is_file()] == []


def test_an_attachment_with_a_very_long_name_imports_again(saved, tmp_path):
    photo = tmp_path / ("a" * 240 + ".png")
    photo.write_bytes(b"\x89PNG fake")
    part = {"type": "file", "file": {"path": str(photo), "orig_name": photo.name}}
    document = tmp_path / "export.json"
    document.write_text(chats.to_json([{"role": "user", "content": [part]}], "Long"))
    _, _, chat = _import(saved, document)
    messages = chat["value"]
    [file] = [p["file"] for m in messages for p in m["content"] if p.get("type") == "file"]
    assert file["orig_name"].endswith(".png") and len(file["orig_name"]) <= chats.NAME_CHARS
    assert Path(file["path"]).read_bytes() == b"\x89PNG fake"


def test_a_folder_of_made_files_keeps_each_for_its_time(tmp_path):
    folder = Folder(tmp_path / "made", keep_s=60)
    old, new = folder.fresh() / "old.png", folder.path / "new.png"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    (folder.path / "old-import").mkdir()
    an_hour_ago = time.time() - 3600
    for path in (old, folder.path / "old-import"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    folder.fresh()  # a new file is about to be made: the old ones go
    assert sorted(p.name for p in folder.path.iterdir()) == ["new.png"]


def test_a_file_that_is_no_export_is_told_why_in_words_once(saved, tmp_path):
    # Before: "bad.json: not a conversation exported by this app (not a conversation exported
    # by this app)", or Python's parser: "(Expecting value: line 1 column 1 (char 0))".
    cases = {
        "bad.json": (b"{not json", "it is not JSON: line 1, column 2"),
        "empty.json": (b"", "it is not JSON: line 1, column 1"),
        "photo.json": (b"\x89PNG\r\n\x1a\n\xff\xfe", "it is not a text file"),
        "other.json": (b'{"messages": []}', "it holds no conversation saved by Export JSON"),
    }
    for name, (content, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.warns(UserWarning) as said:
            _import(saved, path)
        text = str(said[0].message)
        assert f"{name}: not a conversation exported by this app ({why})" in text
        assert text.count("not a conversation") == 1 and "Expecting" not in text
