"""hubclf.text: text from others made safe to show in a terminal line, a Markdown cell, an error message."""

from __future__ import annotations

from hubclf.text import license_id, md_cell, md_code, md_text, printable, short, show_name


def test_printable_escapes_control_characters_only():
    assert printable("rosé 🌹") == "rosé 🌹"
    assert printable("red\x1b[31m\nnext\u2028") == "red\\x1b[31m\\nnext\\u2028"


def test_a_markdown_cell_keeps_one_line_and_its_table():
    assert md_cell("a|b\nc  d") == "a\\|b c d"


def test_short_values_and_visible_names():
    assert short("x" * 100, limit=10) == "'xxxxxx..."
    assert show_name("cat") == "'cat'" and show_name("café") == "'café' ('caf\\xe9')"


def test_markdown_text_shows_markup_instead_of_running_it():
    assert md_text("<img src=x> **b** [l](u)\n# h") == "\\<img src=x\\> \\*\\*b\\*\\* \\[l\\](u) \\# h"
    assert md_text("batch_size") == "batch_size" and md_text("_x_") == "\\_x\\_"  # GFM ignores intraword _
    assert md_cell("a|b") == "a\\|b" and md_code("a`b\nc") == "a'b c"


def test_a_licence_reaches_the_card_header_only_as_an_id():
    assert license_id("bsd-3-clause") == "bsd-3-clause" and license_id("cc-by-nc-4.0") == "cc-by-nc-4.0"
    assert license_id("MIT License") == "other" and license_id("mit\n---\nx: y") == "other"


def test_long_lists_are_cut_at_ten_with_a_count():
    from hubclf.text import listing

    assert listing([f"empty_{i}" for i in range(10_000)]) == ", ".join(f"empty_{i}" for i in range(10)) + (
        " and 9,990 more"
    )
    assert listing(["a", "b"], show=repr) == "'a', 'b'"
