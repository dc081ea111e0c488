"""PDF pages as images, rendered to fit the pixel budget (pypdfium2: a wheel, no system deps)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.media.limits import Budget, MediaError, check_size
from app.media.words import page
from app.said import say

if TYPE_CHECKING:
    from PIL import Image


def open_pdf(
    path: str | Path, budget: Budget, name: str | None = None
) -> tuple[list[Image.Image], int]:
    """The first pages of a PDF as images, and how many pages it has; every page's shape is
    checked before it renders."""
    import pypdfium2 as pdfium

    label = name or Path(path).name
    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception as err:
        raise MediaError(
            say(f"{label}: the PDF cannot be read ({err})", f"{label}：无法读取这个 PDF（{err}）")
        ) from err
    try:
        if len(pdf) == 0:
            raise MediaError(say(f"{label}: the PDF has no pages", f"{label}：这个 PDF 没有页面"))
        sizes = [_page_size(pdf, i, label) for i in range(min(len(pdf), budget.max_pdf_pages))]
        for index, (width, height) in enumerate(sizes):  # points, 1/72 inch
            check_size(label, width, height, what=page(index))
        pages = []
        for index, (width, height) in enumerate(sizes):
            scale = math.sqrt(budget.max_pixels / max(1.0, width * height))
            try:
                bitmap = pdf[index].render(scale=min(scale, 4.0))
            except pdfium.PdfiumError as err:
                raise MediaError(
                    say(
                        f"{label}: page {index + 1} cannot be drawn ({err})",
                        f"{label}：第 {index + 1} 页无法绘制（{err}）",
                    )
                ) from err
            pages.append(bitmap.to_pil().convert("RGB"))
        return pages, len(pdf)
    finally:
        pdf.close()


def _page_size(pdf: Any, index: int, label: str) -> tuple[float, float]:
    import pypdfium2 as pdfium

    try:
        width, height = pdf[index].get_size()
    except pdfium.PdfiumError as err:
        raise MediaError(
            say(
                f"{label}: page {index + 1} of the PDF is damaged ({err})",
                f"{label}：PDF 的第 {index + 1} 页已损坏（{err}）",
            )
        ) from err
    return float(width), float(height)
