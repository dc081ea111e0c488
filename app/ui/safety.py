"""Guards on gradio components: the app never fetches a URL it is handed as a file."""

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
