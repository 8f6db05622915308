"""Text from others, made safe to show: one terminal line, one Markdown table cell, one short error message.

Class names, file names and config values come from folders, CSVs and Hub repos that hubclf did not write; they reach
the terminal, the model card and the app. Every place that shows them goes through these helpers.

    printable("rose\\x1b[31m")   # 'rose\\\\x1b[31m': the escape sequence is shown, not executed
    md_cell("a|b")              # 'a\\\\|b': no broken table
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any


def is_printable(text: str) -> bool:
    """No control characters (Unicode category C*) and no line or paragraph separators."""
    return all(not unicodedata.category(ch).startswith("C") and ch not in "\u2028\u2029" for ch in text)


def printable(text: Any) -> str:
    r"""``text`` with control characters and line breaks escaped, for one line of terminal output.

        printable("rose\x1b[31m\n")   # 'rose\\x1b[31m\\n'
    """
    text = str(text)
    if is_printable(text):
        return text
    return "".join(ch if is_printable(ch) else ch.encode("unicode_escape").decode("ascii") for ch in text)


def short(value: Any, limit: int = 60) -> str:
    """A value for an error message: ``repr`` (so control characters are escaped), cut to ``limit`` characters.

        short("x" * 100, limit=10)   # "'xxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorts(values: list[Any]) -> str:
    """A list of values for an error message, each through :func:`short`.

        shorts(["a", 1])   # "['a', 1]"
    """
    return "[" + ", ".join(short(v) for v in values) + "]"


def show_name(name: str) -> str:
    """A name quoted so that whitespace shows, with code points spelled out when it is not plain ASCII.

        show_name("café")   # "'café' ('caf\\\\xe9')"
    """
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)})"


# What Markdown (CommonMark/GFM) or the HTML inside it can read as markup: a backslash before any of them shows the
# character itself (CommonMark: any ASCII punctuation may be escaped), so "<script>" stays text and "**" stays stars.
# Links and images need "[", emphasis "*" or an underscore at a word's edge (GFM ignores "a_b"), HTML "<" and "&".
_MARKDOWN_SPECIALS = re.compile(r"([\\`*\[\]<>#|~&$]|(?<!\w)_|_(?!\w))")
# A Hub licence id, as the Hub's metadata takes it ("apache-2.0", "bsd-3-clause", "cc-by-nc-4.0", "other").
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


def md_text(text: Any) -> str:
    """Text from others safe inside a line of Markdown: one line (whitespace runs become one space), every character
    that Markdown or HTML could read as markup backslash-escaped.

        md_text("<b>rose</b>\\n# x")   # '\\\\<b\\\\>rose\\\\</b\\\\> \\\\# x'
    """
    return _MARKDOWN_SPECIALS.sub(r"\\\1", printable(re.sub(r"\s+", " ", str(text)).strip()))


def md_cell(text: Any) -> str:
    """Text safe inside one Markdown table cell: :func:`md_text`, whose escaped ``|`` keeps the table whole.

        md_cell("a|b\\nc")   # 'a\\\\|b c'
    """
    return md_text(text)


def license_id(text: Any) -> str:
    """A licence for a model card's metadata: ``text`` if it is a Hub licence id, else ``"other"`` (a licence
    written as prose, with line breaks or markup, must not reach the YAML header).

        license_id("bsd-3-clause")   # 'bsd-3-clause'; license_id("MIT\\n<a>") -> 'other'
    """
    text = str(text).strip() if text is not None else ""
    return text if _LICENSE_ID.fullmatch(text) else "other"


def md_code(text: Any) -> str:
    """Text from others for a Markdown code span (`` `...` ``): one line, and no backtick that would end the span
    (backslashes do not escape inside code spans, so backticks become quotes).

        md_code("resnet`18")   # "resnet'18"
    """
    return printable(re.sub(r"\s+", " ", str(text)).strip()).replace("`", "'")


def listing(items: Any, limit: int = 10, show: Any = str) -> str:
    """The first ``limit`` items, comma-separated (each through ``show``), then how many more: long lists in
    messages and log lines stay one readable line (10,000 empty class folders are not a 199 KB line).

        listing(range(12), limit=3)   # '0, 1, 2 and 9 more'
    """
    items = list(items)
    shown = ", ".join(show(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit:,} more" if len(items) > limit else "")
