"""Generate the command-line reference (cli.md) from hubclf's own argparse parsers, so that it cannot drift.

Run by mkdocs-gen-files at build time: imports ``hubclf.cli`` from this checkout, calls ``build_parser()`` and
renders every sub-command's usage, description and arguments (flags, metavar, choices, help with its defaults).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]  # docs/_scripts/ -> the repository root
sys.path.insert(0, str(ROOT))  # document the checkout being built, not another installed copy

from hubclf.cli import build_parser  # noqa: E402

WIDTH = 100  # usage lines are wrapped at this width, whatever the terminal that builds the site


def escape(text: str) -> str:
    """Markdown-escape help text for a table cell, leaving `code spans` as they are."""
    pieces = re.split(r"(`[^`]*`)", " ".join(text.split()))
    for i in range(0, len(pieces), 2):  # the even pieces lie outside code spans
        piece = pieces[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        pieces[i] = re.sub(r"([\\*_\[\]|])", r"\\\1", piece)
    return "".join(pieces)


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def describe(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    text = formatter._expand_help(action) if action.help else ""
    if action.choices and "{" not in invocation(parser, action):  # a metavar hides the choices: list them
        text += " Choices: " + ", ".join(f"`{choice}`" for choice in action.choices) + "."
    takes_value = action.nargs != 0
    default = action.default
    if takes_value and "default" not in text.lower() and default not in (None, argparse.SUPPRESS, [], ()):
        text += f" (default: `{default}`)"
    return escape(text.strip()) or "&nbsp;"


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    return formatter._format_action_invocation(action)


def arguments(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for group in parser._action_groups:
        hidden = (argparse._HelpAction, argparse._SubParsersAction)  # -h; the commands get their own sections
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS and not isinstance(a, hidden)]
        if not actions:
            continue
        title = group.title or "arguments"
        lines += [f"**{title[0].upper()}{title[1:]}**", ""]
        if group.description:
            lines += [escape(group.description), ""]
        lines += ["| argument | description |", "|---|---|"]
        lines += [f"| `{invocation(parser, a)}` | {describe(parser, a)} |" for a in actions]
        lines.append("")
    return lines


def render() -> str:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    lines = [
        "# Command line",
        "",
        "Every `hubclf` command, its usage and all its arguments. This page is generated from the command's own "
        "argparse parsers (`hubclf.cli.build_parser()`) each time the site is built, so it says exactly what "
        "`hubclf COMMAND --help` says.",
        "",
        "```text",
        usage(parser),
        "```",
        "",
        escape(parser.description or ""),
        "",
        "| command | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#{name}) | {escape(summaries.get(name, ''))} |" for name in commands.choices),
        "",
        *arguments(parser),
    ]
    for name, sub in commands.choices.items():
        lines += [f"## hubclf {name} {{#{name}}}", ""]
        if summaries.get(name):
            lines += [f"*{escape(summaries[name])}*", ""]
        if sub.description:
            lines += [escape(sub.description), ""]
        lines += ["```text", usage(sub), "```", "", *arguments(sub)]
    return "\n".join(lines)


with mkdocs_gen_files.open("cli.md", "w") as page:
    page.write(render())
