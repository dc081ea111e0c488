"""The chat as an MCP tool (`--mcp`): listed, and called with an image as base64 data; a URL
given as a file is refused (the app fetches none)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from app.media import MediaCache
from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app

mcp = pytest.importorskip(
    "mcp", reason="the mcp package is not installed: pip install 'gradio[mcp]'"
)


async def _session_calls(url: str, calls: list[dict]) -> tuple[list, list]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    # The session needs the streams the transport opens: two blocks, one inside the other.
    async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _):  # noqa: SIM117
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            [chat] = [tool for tool in tools if tool.name.endswith("ask")]
            results = [await session.call_tool(chat.name, arguments) for arguments in calls]
            return tools, results


def test_the_chat_is_an_mcp_tool_that_reads_an_image_sent_as_data(tiny_checkpoint, media):
    settings = load_settings(["--mcp", "--max-new-tokens", "16"], environ={})
    cache = MediaCache()
    engine = load_engine(
        str(tiny_checkpoint("qwen3_vl", suppress_eos=True)), media_cache=cache, max_new_tokens=16
    )
    photo = base64.b64encode((media / "red.jpg").read_bytes()).decode()
    calls = [
        {"text": "What colour is it?", "file_1": f"data:image/jpeg;base64,{photo}"},
        {"text": "And this?", "file_1": "http://127.0.0.1:9/photo.jpg"},
    ]
    with launched_app(settings, engine) as url:
        tools, (answered, refused) = asyncio.run(_session_calls(url, calls))
    assert len(tools) == 1  # /ask; the page's own events and /chat (for scripts) are no tools
    assert not answered.isError and answered.content[0].text
    assert cache.misses == 1  # the image was read by the model's side
    assert refused.isError and "does not fetch URLs" in refused.content[0].text
