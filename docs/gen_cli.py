"""Rewrite the `--help` blocks of docs/cli.md from the real argparse parser.

    python docs/gen_cli.py          rewrite the blocks in docs/cli.md
    python docs/gen_cli.py --check  exit 1 if they are out of date

A block sits between `<!-- BEGIN pipes-bus run --help -->` and `<!-- END ... -->` lines.
The help is rendered 100 columns wide, without colour, with the default bus shown as
~/.cache/pipes-bus/bus, so the page is the same on every machine.
tests/test_docs.py fails when the page differs from what this script writes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PAGE = Path(__file__).with_name("cli.md")
_BLOCK = re.compile(
    r"(<!-- BEGIN pipes-bus(?P<cmd>(?: \w+)?) --help -->\n)"
    r"(.*?)"
    r"(<!-- END pipes-bus(?P=cmd) --help -->)",
    re.DOTALL,
)
# Python 3.13 prints "--storage-option, -o KEY=VALUE" where earlier versions print
# "--storage-option KEY=VALUE, -o KEY=VALUE"; compare both in the newer form.
_REPEATED_METAVAR = re.compile(r"(-[\w-]+) (\S+), (-[\w-]+) \2\b")


@contextlib.contextmanager
def _stable_environment() -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.pop("PIPES_BUS_URL", None)
    os.environ.update({"COLUMNS": "100", "NO_COLOR": "1", "XDG_CACHE_HOME": "~/.cache"})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def help_text(command: str) -> str:
    """`pipes-bus [COMMAND] --help` as the real parser prints it ('' is the top level)."""
    from pipes_bus.cli import _parser

    with _stable_environment():
        parser = _parser()
        if command:
            subparsers = next(
                a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            )
            parser = subparsers.choices[command]
        return parser.format_help()


def render(page: str) -> str:
    """``page`` with every help block replaced by the parser's current output."""

    def block(match: re.Match[str]) -> str:
        text = help_text(match.group("cmd").strip()).rstrip("\n")
        return f"{match.group(1)}```text\n{text}\n```\n{match.group(4)}"

    return _BLOCK.sub(block, page)


def normalize(text: str) -> str:
    """Help text with the one difference between Python versions taken out."""
    return _REPEATED_METAVAR.sub(r"\1, \3 \2", text)


def main(argv: list[str]) -> int:
    page = PAGE.read_text(encoding="utf-8")
    fresh = render(page)
    if "--check" in argv:
        if normalize(page) != normalize(fresh):
            print(f"{PAGE} is out of date: run python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
