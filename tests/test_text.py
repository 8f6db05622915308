"""hubclf.text: text from others made safe to show in a terminal line, a Markdown cell, an error message."""

from __future__ import annotations

from hubclf.text import md_cell, printable, short, show_name


def test_printable_escapes_control_characters_only():
    assert printable("rosé 🌹") == "rosé 🌹"
    assert printable("red\x1b[31m\nnext\u2028") == "red\\x1b[31m\\nnext\\u2028"


def test_a_markdown_cell_keeps_one_line_and_its_table():
    assert md_cell("a|b\nc  d") == "a\\|b c d"


def test_short_values_and_visible_names():
    assert short("x" * 100, limit=10) == "'xxxxxx..."
    assert show_name("cat") == "'cat'" and show_name("café") == "'café' ('caf\\xe9')"
