"""Limits shared by writers and readers, and the checks that enforce them.

A message nested deeper than :data:`MAX_NESTING` arrays and objects is refused by the
writer at the call site and reported as ``corrupt`` by the reader: without a bound, one
such message would make every reader of the session fail with ``RecursionError``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_NESTING", "MiB", "json_too_deep", "value_too_deep"]

MiB = 1024 * 1024

#: Deepest nesting of arrays and objects one message may have, the message itself included.
MAX_NESTING = 100

# Every level of nesting takes two bytes at least ("[]"), so a text this short is never
# too deep and needs no look.
_SHORT = 2 * MAX_NESTING
# JSON brackets only, with "[" and "]" written as "{" and "}".
_OPEN_CLOSE = bytes.maketrans(b"[]", b"{}")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"{}[]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _brackets_too_deep(brackets: bytes, limit: int) -> bool:
    # Each pass removes the innermost pairs, so the passes needed are the nesting depth.
    # Unbalanced brackets never empty out: treated as too deep (the caller decides).
    for _ in range(limit):
        if not brackets:
            return False
        fewer = brackets.replace(b"{}", b"")
        if len(fewer) == len(brackets):
            return True
        brackets = fewer
    return bool(brackets)


def json_too_deep(data: bytes | bytearray | memoryview, *, exact: bool = True) -> bool:
    """Whether JSON text nests more than :data:`MAX_NESTING` deep.

    With ``exact=False`` brackets inside strings count too: a quick, C-speed test that
    never misses a deep text but may flag a shallow one whose strings hold brackets.
    """
    if len(data) <= _SHORT:
        return False
    text = bytes(data)
    if exact:
        text = _STRING.sub(b"", text)
    return _brackets_too_deep(text.translate(_OPEN_CLOSE, _NOT_BRACKETS), MAX_NESTING)


def value_too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether a decoded value (dicts, lists, tuples) nests more than ``limit`` deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return False
