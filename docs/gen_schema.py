"""Write docs/wire-schema.json, the JSON Schema of the wire format, from the msgspec Structs.

    python docs/gen_schema.py          rewrite docs/wire-schema.json
    python docs/gen_schema.py --check  exit 1 if it is out of date

tests/test_docs.py fails when the committed file differs from what this script writes.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from pipes_bus.log import ChunkHeader
from pipes_bus.messages import PROTOCOL_VERSION, AnyMessage, MetadataValue

TARGET = Path(__file__).with_name("wire-schema.json")


def build() -> dict[str, Any]:
    """The schema: the root validates one message; $defs also holds ChunkHeader."""
    (message, _header, metadata), components = msgspec.json.schema_components(
        [AnyMessage, ChunkHeader, MetadataValue], ref_template="#/$defs/{name}"
    )
    defs: dict[str, Any] = {
        "Message": {
            "title": "Message",
            "description": "One message of a chunk body, told apart by its `kind`.",
            **message,
        },
        "MetadataValue": {
            "title": "MetadataValue",
            "description": "A typed metadata value, told apart by its `type`.",
            **metadata,
        },
    }
    defs.update(sorted(components.items()))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"pipes_bus wire format, protocol {PROTOCOL_VERSION}",
        "description": (
            "Generated from the msgspec Structs by docs/gen_schema.py; do not edit. "
            "The root validates one message of a chunk body. A chunk's header line "
            "validates against #/$defs/ChunkHeader. Readers must accept members they "
            "do not know; see docs/protocol.md."
        ),
        "x-pipes-bus-protocol": PROTOCOL_VERSION,
        "$ref": "#/$defs/Message",
        "$defs": defs,
    }


def _normalized(value: Any) -> Any:
    """``value`` with every description in one form, whatever wrote it.

    msgspec takes descriptions from docstrings, which Python 3.13 dedents when it compiles
    them and earlier versions leave indented (and msgspec versions differ in what they do
    with that): cleaning every description the same way makes the file identical on every
    supported Python and msgspec. For the same reason, alternatives (``anyOf``) are sorted.
    """
    if isinstance(value, dict):
        out = {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _normalized(v)
            for k, v in value.items()
        }
        if isinstance(out.get("anyOf"), list):  # alternatives in one order, whoever wrote them
            out["anyOf"] = sorted(out["anyOf"], key=lambda x: json.dumps(x, sort_keys=True))
        return out
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def render() -> str:
    """The file's exact text."""
    return json.dumps(_normalized(build()), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python docs/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
