"""Messages about files that several readers give, each declared once (app/said.py)."""

from __future__ import annotations

from app.said import Said, say

KINDS = {"image": "图片", "document": "文档", "animation": "动画"}


def damaged(label: str, kind: str, err: BaseException) -> Said:
    """`kind`: image, document or animation."""
    return say(
        f"{label}: the {kind} is damaged or truncated ({err})",
        f"{label}：{KINDS[kind]}已损坏或不完整（{err}）",
    )


def too_many_pixels(label: str) -> Said:
    return say(
        f"{label}: declares too many pixels; refused before decoding",
        f"{label}：声明的像素过多；已在解码前拒绝",
    )


def missing(label: str) -> Said:
    return say(f"{label}: the file is missing on the server", f"{label}：服务器上找不到这个文件")


def too_large_for_memory(label: str) -> Said:
    return say(
        f"{label}: too large to decode in the memory this app gives it",
        f"{label}：太大了，无法在本应用给它的内存里解码",
    )


def page(index: int) -> Said:
    """Page `index` (from 0), as a message names it."""
    return say(f"page {index + 1}", f"第 {index + 1} 页")
