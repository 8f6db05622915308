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


def md_cell(text: Any) -> str:
    """Text safe inside one Markdown table cell: whitespace runs (line breaks too) become one space, ``|`` escaped.

        md_cell("a|b\\nc")   # 'a\\\\|b c'
    """
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|")


# Characters that start Markdown syntax somewhere in a line (CommonMark's ASCII punctuation that can be escaped),
# and the two that start HTML: text from others must not become a link, an image, a heading or a tag.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def md_text(text: Any) -> str:
    r"""Text shown literally inside Markdown (a heading, a sentence): one line, Markdown punctuation backslash-escaped,
    ``&`` and ``<`` as HTML entities, control characters escaped. A label ``![x](http://evil/t.png)`` then shows as
    typed instead of loading an image from someone else's server.

        md_text("![x](http://e/t.png) <b>")   # '\!\[x\]\(http://e/t\.png\) &lt;b&gt;'
    """
    line = printable(re.sub(r"\s+", " ", str(text)).strip())
    line = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", line)


def listing(items: Any, limit: int = 10, show: Any = str) -> str:
    """The first ``limit`` items, comma-separated (each through ``show``), then how many more: long lists in
    messages and log lines stay one readable line (10,000 empty class folders are not a 199 KB line).

        listing(range(12), limit=3)   # '0, 1, 2 and 9 more'
    """
    items = list(items)
    shown = ", ".join(show(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit:,} more" if len(items) > limit else "")
