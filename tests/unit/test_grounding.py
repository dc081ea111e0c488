"""Boxes and points: parsing each form, coordinates per family, drawing checked by pixels."""

import pytest
from PIL import Image

from app.grounding import Mark, draw_marks, parse_marks, to_pixels


def test_json_in_a_fence():
    text = (
        'Found:\n```json\n[\n  {"bbox_2d": [10, 20, 110, 220], "label": "cat"},\n'
        '  {"bbox_2d": [5, 6, 7, 8], "label": "dog"}\n]\n```'
    )
    assert parse_marks(text) == [Mark((10, 20, 110, 220), "cat"), Mark((5, 6, 7, 8), "dog")]


def test_bare_json_points_and_stray_text():
    text = 'The tip is at {"point_2d": [500, 250], "label": "pen tip"} and that is all.'
    assert parse_marks(text) == [Mark((500, 250), "pen tip")]


def test_truncated_output_keeps_the_complete_objects():
    text = (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, '
        '{"bbox_2d": [9, 1'
    )
    assert parse_marks(text) == [Mark((1, 2, 3, 4), "a"), Mark((5, 6, 7, 8), "b")]


def test_cut_inside_the_label_still_reads_the_box():
    assert parse_marks('[{"bbox_2d": [1, 2, 3, 4], "label": "unfin') == [Mark((1, 2, 3, 4), "")]


def test_json_with_trailing_comma_is_read_field_by_field():
    assert parse_marks('{"label": "x", "bbox_2d": [1, 2, 3, 4],}') == [Mark((1, 2, 3, 4), "x")]


def test_qwen2_vl_grounding_tokens():
    text = (
        "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
    )
    assert parse_marks(text) == [Mark((100, 200, 500, 600), "the cat")]


def test_older_ref_and_box_tags():
    text = "<ref>dog</ref><box>(1, 2), (30, 40)</box> and <box>(5,6),(7,8)</box>"
    assert parse_marks(text) == [Mark((1, 2, 30, 40), "dog")]
    assert parse_marks("<box>(5,6),(7,8)</box>") == [Mark((5, 6, 7, 8), "")]


@pytest.mark.parametrize(
    "text",
    [
        "no boxes here",
        '{"bbox_2d": "oops"}',
        '{"bbox_2d": [1, 2, 3]}',
        '{"point_2d": [1, "a"]}',
        "__import__('os').system('echo pwned')",
        '{"bbox_2d": [1e400, 2, 3, 4]',
    ],
)
def test_unreadable_pieces_are_skipped(text):
    assert parse_marks(text) == []


def test_coordinates_per_family():
    box = Mark((100, 200, 300, 400))
    # Qwen3-VL / Qwen3.5 / Qwen2-VL: 0-1000 relative to the image.
    assert to_pixels(box, "qwen3_vl", (2000, 1000), None) == (200, 200, 600, 400)
    assert to_pixels(box, "qwen2_vl", (2000, 1000), (560, 280)) == (200, 200, 600, 400)
    # Qwen2.5-VL: absolute pixels of the resized model input (here half the shown size).
    assert to_pixels(box, "qwen2_5_vl", (1000, 800), (500, 400)) == (200, 400, 600, 800)
    # Out of range values are clamped; swapped corners are put in order.
    assert to_pixels(Mark((900, 900, -5, 2000)), "qwen3_vl", (100, 100), None) == (0, 90, 90, 100)


def test_drawing_outlines_the_box_and_leaves_the_rest():
    image = Image.new("RGB", (400, 300), "white")
    drawn = draw_marks(image, [Mark((250, 250, 750, 750), "thing")], "qwen3_vl")
    assert image.getpixel((100, 75)) == (255, 255, 255)  # the original is untouched
    left, top, right, bottom = 100, 75, 300, 225
    for x, y in [(left, 150), (right - 1, 150), (200, top), (200, bottom - 1)]:
        assert drawn.getpixel((x, y)) != (255, 255, 255), (x, y)
    assert drawn.getpixel((200, 150)) == (255, 255, 255)  # inside stays clear
    assert drawn.getpixel((10, 290)) == (255, 255, 255)  # far outside too
    # The label sits on a coloured tag just above the box's top left corner.
    assert drawn.getpixel((left + 3, top - 5)) != (255, 255, 255)


def test_drawing_a_point():
    drawn = draw_marks(Image.new("RGB", (200, 200), "black"), [Mark((500, 500))], "qwen3_5")
    assert drawn.getpixel((100, 100)) != (0, 0, 0)
    assert drawn.getpixel((10, 10)) == (0, 0, 0)
