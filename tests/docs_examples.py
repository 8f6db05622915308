"""Helpers for tests/test_docs.py: find the code blocks of the documentation, and build the world they run in.

Test infrastructure, not product. The documentation is ``README.md`` and ``docs/**/*.md`` (generated pages such as
the command-line reference are not on disk and hold no examples).
"""

from __future__ import annotations

import random
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

# A block is skipped only when the line right before its opening fence is this HTML comment (invisible on the site,
# visible in the source), with a reason: <!-- docs-test: skip because ... -->
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b\s*(?P<reason>.*?)\s*-->")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*$")


@dataclass
class Block:
    path: Path  # the Markdown file
    line: int  # 1-based line of the first line of code
    lang: str  # "python", "pycon", "bash", "text", ...
    code: str
    skip_reason: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def doc_pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order (also those indented under a list item)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : j]]
        marker = SKIP_MARKER.search(lines[i - 1]) if i > 0 else None
        skip = (marker["reason"] or "no reason given") if marker else None
        blocks.append(Block(path, i + 2, opening["lang"].lower(), "\n".join(body) + "\n", skip))
        i = j + 1
    return blocks


def pages_with_examples() -> list[Path]:
    """The pages that have at least one Python block (``python`` or ``pycon``)."""
    return [page for page in doc_pages() if any(b.lang in ("python", "pycon") for b in code_blocks(page))]


def prose_names(path: Path) -> list[tuple[str, str]]:
    """(where, name) of every dotted ``hubclf.x.y`` name in a code span of the prose (outside code blocks)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in code_blocks(path):  # blank out the fences and the code, keeping the line numbers
        for i in range(block.line - 2, min(len(lines), block.line + len(block.code.splitlines()))):
            lines[i] = ""
    text = "\n".join(lines)
    found = []
    for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):  # a span may run over a line break
        number = text.count("\n", 0, span.start()) + 1
        for name in re.findall(r"(?<![\w/.-])hubclf(?:\.[A-Za-z_]\w*)+", span[1]):
            found.append((f"{path.relative_to(REPO_ROOT)}:{number}", name))
    return found


# ---- hubclf command lines in shell blocks -------------------------------------------------------------------------
_SHELL_LANGS = ("bash", "sh", "shell", "console")
_UNRESOLVED = re.compile(r"\$[({\w]|`|[<>*?]")  # variables, command substitution, redirections, globs


@dataclass
class CommandLine:
    where: str
    text: str  # as written (continuations joined)
    argv: list[str] | None  # the arguments after `hubclf` (None: not resolvable without a shell)
    unresolved: str = ""


def _logical_lines(block: Block, prompt_only: bool) -> Iterator[tuple[int, str]]:
    """(line number, text) of each command of a block, with backslash continuations joined."""
    raw = block.code.splitlines()
    i = 0
    while i < len(raw):
        start, text = block.line + i, raw[i]
        if prompt_only:  # an output listing: only the `$ ...` lines are commands
            if not text.startswith("$ "):
                i += 1
                continue
            text = text[2:]
        while text.rstrip().endswith("\\") and i + 1 < len(raw):
            i += 1
            text = text.rstrip()[:-1] + " " + raw[i].strip()
        i += 1
        yield start, text


def hubclf_command_lines(path: Path) -> list[CommandLine]:
    """Every ``hubclf ...`` (or ``... -m hubclf.cli ...``) command of the shell blocks and ``$``-prompted listings."""
    found = []
    for block in code_blocks(path):
        if block.lang not in (*_SHELL_LANGS, "text", ""):
            continue
        prompt_only = block.lang not in _SHELL_LANGS or block.lang == "console"
        for line, text in _logical_lines(block, prompt_only):
            where = f"{block.where.rsplit(':', 1)[0]}:{line}"
            try:
                tokens = shlex.split(text, comments=True)
            except ValueError as error:  # an unbalanced quote: report it as a command that does not parse
                found.append(CommandLine(where, text, None, f"shlex: {error}"))
                continue
            for command in _split_on_operators(tokens):
                argv = _hubclf_argv(command)
                if argv is None:
                    continue
                unresolved = next((token for token in argv if _UNRESOLVED.search(token)), "")
                found.append(CommandLine(where, text, None if unresolved else argv, unresolved))
    return found


def _split_on_operators(tokens: list[str]) -> Iterator[list[str]]:
    command: list[str] = []
    for token in tokens:
        if token in ("&&", "||", ";", "|", "&"):
            yield command
            command = []
        else:
            command.append(token)
    yield command


def _hubclf_argv(tokens: list[str]) -> list[str] | None:
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if tokens[:1] == ["hubclf"]:
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "hubclf.cli":
            return tokens[i + 2 :]
    return None


# ---- the world the Python examples run in ---------------------------------------------------------------------------
FLOWER_CLASSES = {"daisy": (235, 235, 200), "rose": (200, 30, 50), "tulip": (245, 150, 30)}


def make_photos(root: Path, train_per_class: int = 6, validation_per_class: int = 2) -> None:
    """``root/photos/{train,validation}/<class>/*.jpg`` (small, noisy single-colour JPEGs: three learnable
    classes), and ``root/rose.jpg`` / ``root/daisy.jpg``: the photos the documentation's examples talk about."""
    rng = random.Random(0)

    def photo(colour: tuple[int, int, int]) -> Image.Image:
        image = Image.new("RGB", (48, 64), colour)
        pixels = image.load()
        for x in range(image.width):
            for y in range(image.height):
                pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in colour)
        return image

    for split, count in (("train", train_per_class), ("validation", validation_per_class)):
        for name, colour in FLOWER_CLASSES.items():
            folder = root / "photos" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                photo(colour).save(folder / f"{index}.jpg", quality=90)
    photo(FLOWER_CLASSES["rose"]).save(root / "rose.jpg", quality=90)
    photo(FLOWER_CLASSES["daisy"]).save(root / "daisy.jpg", quality=90)
