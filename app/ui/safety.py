"""Guards of the page: the app never fetches a URL it is handed as a file, and the browser
never fetches a picture from elsewhere because a message said so."""

from __future__ import annotations

from typing import Any

import gradio as gr


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


# The page loads pictures, video and sound only from itself (and data: or blob: URLs): no
# message, typed by a user or echoed by the model from an image or PDF (prompt injection), can
# make the browser fetch from another host, which could leak what the page shows. Gradio's
# sanitizer keeps <img> tags; the browser enforces this policy on all of them.
PAGE_HEAD = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"img-src 'self' data: blob:; media-src 'self' data: blob:\">"
)
