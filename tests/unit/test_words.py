"""The page's two languages: every word has both (app/ui/words.py)."""

from app.ui.panel import FIELDS
from app.ui.words import CHINESE, ENGLISH, word


def test_every_word_has_english_and_chinese_and_every_setting_a_word():
    assert set(ENGLISH) == set(CHINESE)
    assert all(CHINESE[k] for k in CHINESE)
    for field in FIELDS:
        assert ENGLISH[f"field.{field.name}"] == field.label  # the errors name it so too
        word(f"field.{field.name}")
