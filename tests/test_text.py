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


def test_markdown_text_from_others_shows_as_typed():
    from hubclf.text import md_text

    assert md_text("![x](http://evil/t.png)") == "\\!\\[x\\]\\(http://evil/t\\.png\\)"  # no image, no link
    assert md_text("<img src=x onerror=alert(1)> & co") == "&lt;img src=x onerror=alert\\(1\\)&gt; &amp; co"
    assert md_text("# big\n* item\x1b[31m") == "\\# big \\* item\\\\x1b\\[31m"  # one line, no heading, no list
    assert md_text("rose") == "rose"


def test_long_lists_are_cut_at_ten_with_a_count():
    from hubclf.text import listing

    assert listing([f"empty_{i}" for i in range(10_000)]) == ", ".join(f"empty_{i}" for i in range(10)) + (
        " and 9,990 more"
    )
    assert listing(["a", "b"], show=repr) == "'a', 'b'"
