"""PDF pages as images, rendered to fit the pixel budget (pypdfium2: a wheel, no system deps)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.media.limits import Budget, MediaError, check_size

if TYPE_CHECKING:
    from PIL import Image


def open_pdf(path: str | Path, budget: Budget, name: str | None = None) -> list[Image.Image]:
    """The first pages of a PDF as images; every page's shape is checked before it renders."""
    import pypdfium2 as pdfium

    label = name or Path(path).name
    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception as err:
        raise MediaError(f"{label}: the PDF cannot be read ({err})") from err
    try:
        if len(pdf) == 0:
            raise MediaError(f"{label}: the PDF has no pages")
        sizes = [_page_size(pdf, i, label) for i in range(min(len(pdf), budget.max_pdf_pages))]
        for index, (width, height) in enumerate(sizes):  # points, 1/72 inch
            check_size(label, width, height, what=f"page {index + 1}")
        pages = []
        for index, (width, height) in enumerate(sizes):
            scale = math.sqrt(budget.max_pixels / max(1.0, width * height))
            try:
                bitmap = pdf[index].render(scale=min(scale, 4.0))
            except pdfium.PdfiumError as err:
                raise MediaError(f"{label}: page {index + 1} cannot be drawn ({err})") from err
            pages.append(bitmap.to_pil().convert("RGB"))
        return pages
    finally:
        pdf.close()


def _page_size(pdf: Any, index: int, label: str) -> tuple[float, float]:
    import pypdfium2 as pdfium

    try:
        width, height = pdf[index].get_size()
    except pdfium.PdfiumError as err:
        raise MediaError(f"{label}: page {index + 1} of the PDF is damaged ({err})") from err
    return float(width), float(height)
