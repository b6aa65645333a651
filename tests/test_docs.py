"""The documentation cannot drift from the code: schema, CLI help, protocol, site build."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

import pipes_bus
import pipes_bus.messages
from pipes_bus._wire.chunk import build_chunk
from pipes_bus.log import SessionReader
from pipes_bus.messages import (
    Check,
    Closed,
    Custom,
    ExceptionInfo,
    Log,
    Materialization,
    Opened,
    Output,
    Progress,
    TableColumn,
    TableValue,
    UrlValue,
    WriterInfo,
    metadata_value,
)
from pipes_bus.orchestrator import StreamFault, open_session
from pipes_bus.transports._memory import MemoryTransport

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(name: str) -> ModuleType:
    """Import a script from docs/ (it is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_schema() -> ModuleType:
    return _load("gen_schema")


@pytest.fixture(scope="module")
def gen_cli() -> ModuleType:
    return _load("gen_cli")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((DOCS / "wire-schema.json").read_text(encoding="utf-8"))


def _one_of_each_kind() -> list[Any]:
    metadata = {
        "text": "a",
        "int": 1,
        "float": 1.5,
        "bool": True,
        "json": {"a": [1, None]},
        "path": Path("/data/x"),
        "url": UrlValue("https://example.com"),
        "table": TableValue(records=[{"a": 1}], columns=[TableColumn("a", "int")]),
    }
    typed = {k: metadata_value(v) for k, v in metadata.items()}
    error = ExceptionInfo(
        type="ValueError",
        message="bad",
        stack=["  File x\n"],
        cause=ExceptionInfo(type="KeyError", message="'k'"),
    )
    return [
        Opened(time=1.0, info=WriterInfo(id="w-1", label="rank-0", pid=1, host="h")),
        Log(time=1.0, message="hi", level="warning", logger="l", fields={"n": 1}),
        Materialization(time=1.0, asset_key="a", data_version="v1", metadata=typed),
        Check(time=1.0, asset_key="a", check_name="c", passed=False, severity="warn"),
        Progress(time=1.0, current=3, total=10, unit="files", label="load"),
        Custom(time=1.0, payload={"any": ["thing", 1, 2.5, None]}),
        Output(time=1.0, stream="stderr", text="line\n"),
        Closed(time=1.0, count=7, exception=error),
    ]


class TestWireSchema:
    def test_committed_schema_equals_freshly_generated(self, gen_schema: ModuleType) -> None:
        """docs/wire-schema.json is exactly what docs/gen_schema.py writes from the Structs."""
        committed = (DOCS / "wire-schema.json").read_text(encoding="utf-8")
        assert committed == gen_schema.render(), (
            "docs/wire-schema.json is out of date with the msgspec Structs: "
            "run `python docs/gen_schema.py` and commit the result."
        )

    def test_schema_names_the_protocol_version(self, schema: dict[str, Any]) -> None:
        """The schema says which protocol version it describes."""
        assert schema["x-pipes-bus-protocol"] == pipes_bus.messages.PROTOCOL_VERSION
        assert pipes_bus.messages.PROTOCOL_VERSION in schema["title"]

    def test_schema_covers_every_message_kind_and_metadata_type(
        self, schema: dict[str, Any]
    ) -> None:
        """Every message kind and metadata type of the code has a schema definition."""
        kinds = {t.__struct_config__.tag for t in pipes_bus.messages.AnyMessage.__args__}
        types = {t.__struct_config__.tag for t in pipes_bus.messages.MetadataValue.__args__}
        defs = schema["$defs"]
        assert set(defs["Message"]["discriminator"]["mapping"]) == kinds
        assert set(defs["MetadataValue"]["discriminator"]["mapping"]) == types
        assert "ChunkHeader" in defs

    def test_real_messages_and_headers_validate(self, schema: dict[str, Any]) -> None:
        """Messages of every kind and a real chunk header validate against the schema."""
        jsonschema = pytest.importorskip("jsonschema")
        messages = jsonschema.Draft202012Validator(schema)
        for message in _one_of_each_kind():
            messages.validate(json.loads(msgspec.json.encode(message)))
        header = jsonschema.Draft202012Validator(
            {"$ref": "#/$defs/ChunkHeader", "$defs": schema["$defs"]}
        )
        chunk = build_chunk(writer="w-1", chunk=0, first=0, count=0, body=b"", final=True)
        header.validate(json.loads(chunk.split(b"\n", 1)[0]))


class TestCliPage:
    def test_help_blocks_equal_the_parser_output(self, gen_cli: ModuleType) -> None:
        """Every `--help` block on docs/cli.md is what the real argparse parser prints."""
        page = (DOCS / "cli.md").read_text(encoding="utf-8")
        fresh = gen_cli.render(page)
        assert gen_cli.normalize(page) == gen_cli.normalize(fresh), (
            "docs/cli.md shows outdated `pipes-bus --help` output: "
            "run `python docs/gen_cli.py` and commit the result."
        )

    def test_every_subcommand_has_a_help_block(self) -> None:
        """The page has a help block for the top level and for each subcommand."""
        import argparse

        from pipes_bus.cli import _parser

        parser = _parser()
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        page = (DOCS / "cli.md").read_text(encoding="utf-8")
        for command in ["", *subparsers.choices]:
            name = f"pipes-bus {command}".strip()
            assert f"<!-- BEGIN {name} --help -->" in page, f"docs/cli.md lacks `{name} --help`"

    def test_help_blocks_are_not_empty(self) -> None:
        """A generated block holds the usage line, so the markers were filled in."""
        page = (DOCS / "cli.md").read_text(encoding="utf-8")
        blocks = re.findall(r"--help -->\n```text\n(.*?)```", page, re.DOTALL)
        assert len(blocks) == 7
        assert all(block.startswith("usage: pipes-bus") for block in blocks)

    def test_exit_status_table_matches_the_cli(self) -> None:
        """The exit-status table lists exactly the statuses the CLI documents in its help."""
        from pipes_bus.cli import EXIT_CODES

        page = (DOCS / "cli.md").read_text(encoding="utf-8")
        for line in EXIT_CODES.splitlines():
            match = re.fullmatch(r"  (\S+)\s+(.+)", line)
            if match:
                code, meaning = match.groups()
                assert f"| {code} | {meaning} |" in page, f"exit status {code} is not in the table"


class TestProtocolPage:
    def test_crc32_follows_the_documented_rule(self) -> None:
        """crc32 is CRC-32 of the header with mac removed and crc32 as 0, a newline, the body."""
        body = b'{"kind":"custom","payload":1}\n'
        for key in (None, b"k" * 32):
            data = build_chunk(
                writer="w-1", chunk=3, first=7, count=1, body=body, compression="gzip", key=key
            )
            line, stored = data.split(b"\n", 1)
            header = json.loads(line)
            masked = re.sub(rb',"mac":"[^"]*"', b"", line)
            masked = re.sub(rb'"crc32":[0-9]+', b'"crc32":0', masked)
            assert zlib.crc32(masked + b"\n" + stored) == header["crc32"]
            assert header["size"] == len(stored)
            assert ("mac" in header) == (key is not None)

    def test_a_chunk_written_from_the_page_with_the_stdlib_is_read(self) -> None:
        """A stream written from the page with only json and zlib is delivered in full."""
        transport = MemoryTransport(f"memory://docs-protocol-{uuid.uuid4().hex}")
        session, writer = "s-docs", "w-docs"
        lines = [
            {"kind": "opened", "info": {"id": writer, "language": "shell"}, "time": 1.0},
            {"kind": "log", "message": "hello", "time": 2.0},
            {"kind": "custom", "payload": {"n": 1}},
        ]
        closed = [{"kind": "closed", "count": 3}]
        for number, (first, messages, final) in enumerate([(0, lines, False), (3, closed, True)]):
            body = zlib.compress(
                b"".join(json.dumps(m, separators=(",", ":")).encode() + b"\n" for m in messages)
            )
            header = {
                "format": "pipes-bus-chunk",
                "protocol": "1.0",
                "writer": writer,
                "chunk": number,
                "first": first,
                "count": len(messages),
                "compression": "zlib",
                "size": len(body),
                "crc32": 0,
                "final": final,
            }
            line = json.dumps(header, separators=(",", ":")).encode()
            header["crc32"] = zlib.crc32(line + b"\n" + body)
            line = json.dumps(header, separators=(",", ":")).encode()
            key = f"{session}/streams/{writer}/{number:020d}"
            assert transport.put_if_absent(key, line + b"\n" + body)
        reader = SessionReader(transport, session)
        items = reader.poll()
        assert not [i for i in items if isinstance(i, StreamFault)]
        assert [(i.seq, type(i.message).__name__) for i in items] == [
            (0, "Opened"),
            (1, "Log"),
            (2, "Custom"),
            (3, "Closed"),
        ]
        assert reader.open_writers == []

    def test_bootstrap_decodes_as_documented(self, tmp_path: Path) -> None:
        """The bootstrap is urlsafe base64 of zlib of JSON, and carries no credentials."""

        def decode(text: str) -> Any:
            return json.loads(zlib.decompress(base64.urlsafe_b64decode(text)))

        options = {"key": "AKIA", "secret": "s", "endpoint_url": "http://127.0.0.1:9"}
        with open_session(
            str(tmp_path / "bus"),
            context={"asset_keys": ["orders"]},
            storage_options={**options, "fsync": False},
        ) as session:
            params = decode(session.env["PIPES_BUS_SESSION"])
            context = decode(session.env["PIPES_BUS_CONTEXT"])
        assert params["bus"] == str(tmp_path / "bus")
        assert params["session"] == session.id
        assert params["context"] == {"via": "env", "env": "PIPES_BUS_CONTEXT"}
        assert context == {"run_id": session.id, "asset_keys": ["orders"]}
        # Credentials never travel: only the non-secret options reach the worker.
        assert params["storage_options"] == {"endpoint_url": "http://127.0.0.1:9", "fsync": False}


class TestSite:
    def test_mkdocs_build_strict_is_clean(self, tmp_path: Path) -> None:
        """`mkdocs build --strict` succeeds with no warnings (links, nav, snippets)."""
        if importlib.util.find_spec("mkdocs") is None:
            pytest.skip("mkdocs is not installed (pip install mkdocs-material)")
        if importlib.util.find_spec("material") is None:
            pytest.skip("mkdocs-material is not installed (pip install mkdocs-material)")
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mkdocs",
                "build",
                "--strict",
                "--config-file",
                str(ROOT / "mkdocs.yml"),
                "--site-dir",
                str(tmp_path / "site"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "WARNING" not in output, output
        assert (tmp_path / "site" / "protocol" / "index.html").exists()
        assert (tmp_path / "site" / "wire-schema.json").exists()

    def test_every_page_is_in_the_nav(self) -> None:
        """Each Markdown page under docs/ is listed in mkdocs.yml."""
        config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
        pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
        missing = [page for page in pages if f": {page}" not in config]
        assert not missing, f"pages missing from the nav in mkdocs.yml: {missing}"


class TestReadme:
    def test_quick_start_commands_are_present(self) -> None:
        """README shows the one-command demo and the one-command test run."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        assert 'pip install ".[cli]" && pipes-bus run -- python docs/examples/hello.py' in readme
        block = re.search(
            r"<!-- BEGIN test command.*?-->(.*?)<!-- END test command -->", readme, re.DOTALL
        )
        assert block is not None, "README lost its marked test-command block"
        assert "pytest" in block.group(1)

    def test_example_files_named_in_the_docs_exist(self) -> None:
        """Every docs/examples/*.py that a page or the README names is there."""
        text = (ROOT / "README.md").read_text(encoding="utf-8") + "".join(
            p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")
        )
        named = set(re.findall(r"docs/examples/([\w-]+\.py)", text))
        assert named
        assert not [n for n in named if not (DOCS / "examples" / n).exists()]
