"""A griffe extension: render the reST habits of hubclf's docstrings as Markdown that mkdocstrings shows well.

hubclf's docstrings are plain prose with a few reST habits, which Markdown would mangle:

- a literal block, ``Example::`` + blank line + indented code: Markdown shows the ``::`` and an unhighlighted
  block; it becomes ``Example:`` + a fenced ``python`` block;
- a doctest paragraph (``>>> call()`` and its output): Markdown reads ``x["a"]["b"]`` as a reference link; it
  becomes a fenced ``pycon`` block;
- a role such as ``:data:`SPECS``` becomes the code span ``SPECS``.

The source files are not changed: griffe applies this to the docstrings it has read, at build time.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_INTRODUCER = re.compile(r"^(?P<indent>[ \t]*)(?P<text>.*?)\s*::[ \t]*$")
_ROLE = re.compile(r":(?:py:)?(?:data|func|class|meth|attr|mod|obj|exc|const):`~?([^`]+)`")


def convert(text: str) -> str:
    """Apply the three rewrites above; everything else is left as it is."""
    return doctest_blocks(literal_blocks(_ROLE.sub(r"`\1`", text)))


def doctest_blocks(text: str) -> str:
    """A paragraph that starts with ``>>>`` (outside a fence) -> a fenced ``pycon`` block."""
    out: list[str] = []
    lines = text.splitlines()
    fenced = False
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            fenced = not fenced
        if fenced or not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def literal_blocks(text: str) -> str:
    """``Text::`` + blank line + indented block -> ``Text:`` + a fenced python block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _INTRODUCER.match(lines[i])
        indent = match["indent"] if match else ""
        j = i + 1
        while match and j < len(lines) and not lines[j].strip():
            j += 1
        block_indent = len(lines[j]) - len(lines[j].lstrip()) if match and j < len(lines) else 0
        if not match or j == i + 1 or block_indent <= len(indent):
            out.append(lines[i])
            i += 1
            continue
        if match["text"]:
            out.append(f"{indent}{match['text']}:")
        out += ["", f"{indent}```python"]
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) >= block_indent):
            out.append(indent + lines[j][block_indent:])
            j += 1
        while out[-1].strip() == "":
            out.pop()
        out += [f"{indent}```", ""]
        i = j
    return "\n".join(out)


class RstLiteralBlocks(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
