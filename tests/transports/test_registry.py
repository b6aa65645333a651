"""The transport registry: URL scheme to transport, plugins, and install hints."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipes_bus import ConfigurationError, PipesBusWarning, UnknownSchemeError
from pipes_bus.transports import (
    ENTRY_POINT_GROUP,
    Transport,
    _registry,
    open_transport,
    register_transport,
    transport_class,
)
from pipes_bus.transports._file import FileTransport
from pipes_bus.transports._fsspec import FsspecTransport
from pipes_bus.transports._memory import MemoryTransport
from pipes_bus.transports._registry import scheme_of

FSSPEC_REGISTRY = importlib.import_module("fsspec.registry")  # the module, not the mapping


class PluginTransport(MemoryTransport):
    """A stand-in for a third-party transport."""


@dataclass
class FakeEntryPoint:
    """Just enough of importlib.metadata.EntryPoint for the registry."""

    name: str
    value: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeEntryPoint]]:
    """No registrations, no hints given yet, and exactly the plugins a test adds."""
    plugins: list[FakeEntryPoint] = []
    monkeypatch.setattr(_registry, "_registered", {})
    monkeypatch.setattr(_registry, "_hinted", set())
    monkeypatch.setattr(
        _registry, "entry_points", lambda group: list(plugins) if group == ENTRY_POINT_GROUP else []
    )
    yield plugins


class TestSchemeOf:
    """scheme_of: which part of a bus URL picks the transport."""

    @pytest.mark.parametrize(
        ("url", "scheme"),
        [
            ("memory://bus", "memory"),
            ("S3://Bucket/prefix", "s3"),
            ("file:///tmp/bus", "file"),
            ("gs://b", "gs"),
            ("/tmp/bus", ""),
            ("relative/dir", ""),
            ("./bus", ""),
            ("C:\\bus", ""),
            ("c:/bus", ""),
            ("~/bus", ""),
            ("simplecache::s3://bucket/p", "simplecache"),
            ("zip://inner::s3://bucket/x.zip", "zip"),
        ],
    )
    def test_schemes_and_plain_paths(self, url: str, scheme: str) -> None:
        """The scheme is lower-cased; plain and drive-letter paths have none; a chain's is the first."""
        assert scheme_of(url) == scheme

    @pytest.mark.parametrize("url", ["s3:/bucket", "s3:bucket", "://bucket", "http:x"])
    def test_malformed_urls_are_refused(self, url: str) -> None:
        """Something that looks like a URL but is not well-formed raises ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            scheme_of(url)
        assert str(info.value) == (
            f"Bus URL {url!r} is malformed: expected SCHEME://LOCATION (e.g. s3://bucket/prefix) "
            "or a plain directory path."
        )
        assert not isinstance(info.value, UnknownSchemeError)

    @pytest.mark.parametrize("url", ["", "   "])
    def test_empty_urls_are_refused(self, url: str) -> None:
        """An empty or blank URL raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="is empty"):
            scheme_of(url)


class TestBuiltins:
    """The built-in transports."""

    @pytest.mark.parametrize(
        ("url", "cls"),
        [
            ("memory://x", MemoryTransport),
            ("file:///tmp/x", FileTransport),
            ("local:///tmp/x", FileTransport),
            ("/tmp/x", FileTransport),
            ("rel/x", FileTransport),
        ],
    )
    def test_builtin_schemes(self, url: str, cls: type[Transport]) -> None:
        """memory://, file://, local:// and plain paths map to the built-in transports."""
        assert transport_class(url) is cls

    def test_plain_path_and_file_url_name_the_same_directory(self, tmp_path: Path) -> None:
        """A plain path and its file:// URL open the same absolute directory."""
        plain = open_transport(str(tmp_path / "bus"))
        url = open_transport(f"file://{tmp_path}/bus")
        assert isinstance(plain, FileTransport)
        assert isinstance(url, FileTransport)
        assert plain.root == url.root == str(tmp_path / "bus")
        assert plain.put_if_absent("k", b"v")
        assert url.get("k") == b"v"

    def test_relative_file_url_is_refused(self) -> None:
        """file://relative is refused, with the two forms that work."""
        with pytest.raises(ConfigurationError) as info:
            open_transport("file://relative/dir")
        assert str(info.value) == (
            "'file://relative/dir' is not an absolute file URL; write file:///abs/path or a "
            "plain path."
        )

    def test_unknown_scheme_lists_what_is_known(self) -> None:
        """A scheme nobody serves raises UnknownSchemeError listing the known ones."""
        with pytest.raises(UnknownSchemeError) as info:
            transport_class("nosuch://x")
        assert str(info.value) == (
            "No transport for nosuch:// (in 'nosuch://x'). Known here: file, local, memory, "
            "plain paths, and every protocol fsspec knows."
        )


class TestPlugins:
    """Plugins through the entry-point group, and register_transport."""

    def test_entry_point_plugin_serves_its_scheme(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """A plugin in the pipes_bus.transports group is found by scheme, case-insensitively."""
        clean_registry.append(FakeEntryPoint("Zed", "plugin:PluginTransport", PluginTransport))
        assert transport_class("zed://bucket/p") is PluginTransport
        transport = open_transport("ZED://bucket/p", option=1)
        assert isinstance(transport, PluginTransport)
        assert transport.storage_options == {"option": 1}

    def test_plugin_is_listed_among_known_schemes(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """Installed plugins appear in the unknown-scheme message."""
        clean_registry.append(FakeEntryPoint("zed", "plugin:PluginTransport", PluginTransport))
        with pytest.raises(UnknownSchemeError, match="Known here: file, local, memory, zed,"):
            transport_class("nosuch://x")

    def test_plugin_takes_precedence_over_a_builtin(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """A plugin for memory:// replaces the built-in one."""
        clean_registry.append(FakeEntryPoint("memory", "plugin:PluginTransport", PluginTransport))
        assert transport_class("memory://x") is PluginTransport

    def test_plugin_that_fails_to_import_is_a_configuration_error(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """A broken plugin raises ConfigurationError naming the plugin and the import error."""
        clean_registry.append(FakeEntryPoint("zed", "zed_plugin:T", ImportError("no module zed")))
        with pytest.raises(ConfigurationError) as info:
            transport_class("zed://x")
        assert str(info.value) == (
            "The transport plugin for zed:// (zed_plugin:T) failed to import: no module zed"
        )

    def test_plugin_that_is_not_a_transport_is_refused(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """An entry point that loads something other than a Transport subclass is refused."""
        clean_registry.append(FakeEntryPoint("zed", "zed_plugin:T", dict))
        with pytest.raises(ConfigurationError, match="is not a pipes_bus Transport subclass"):
            transport_class("zed://x")

    def test_register_transport_takes_precedence_over_plugins(
        self, clean_registry: list[FakeEntryPoint]
    ) -> None:
        """register_transport() beats an installed plugin for the same scheme."""
        clean_registry.append(FakeEntryPoint("zed", "plugin:PluginTransport", PluginTransport))
        register_transport("ZED", MemoryTransport)
        assert transport_class("zed://x") is MemoryTransport

    def test_register_transport_accepts_a_lazy_import_string(self) -> None:
        """A "module:Class" string is imported when the scheme is first used."""
        register_transport("lazy", "pipes_bus.transports._memory:MemoryTransport")
        assert transport_class("lazy://x") is MemoryTransport

    @pytest.mark.parametrize(
        "target", ["pb_no_such_module:T", "pipes_bus.transports._memory:NoSuchClass"]
    )
    def test_bad_lazy_import_string_is_a_configuration_error(self, target: str) -> None:
        """A lazy string that does not import raises ConfigurationError naming it."""
        register_transport("lazy", target)
        with pytest.raises(ConfigurationError, match=f"Cannot load the transport {target!r}"):
            transport_class("lazy://x")


class TestFsspecFallback:
    """Every other protocol fsspec knows goes through the generic fsspec transport."""

    def test_fsspec_protocols_without_a_plugin_use_the_generic_transport(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A protocol fsspec knows is served by FsspecTransport, with the listings cache off."""
        monkeypatch.setitem(
            FSSPEC_REGISTRY.known_implementations,
            "pbtest",
            {"class": "fsspec.implementations.memory.MemoryFileSystem"},
        )
        transport = open_transport("pbtest://root/bus")
        assert type(transport) is FsspecTransport
        assert transport.fs.dircache.use_listings_cache is False
        assert transport.put_if_absent("a/b", b"1")
        assert transport.get("a/b") == b"1"

    def test_missing_fsspec_backend_gives_an_install_hint(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When fsspec's backend is not installed, opening says so and what to install."""
        monkeypatch.setitem(
            FSSPEC_REGISTRY.known_implementations,
            "pbmissing",
            {"class": "pb_no_such_module.FS", "err": "Install pb-no-such to use pbmissing"},
        )
        with pytest.raises(ConfigurationError) as info:
            open_transport("pbmissing://x")
        assert str(info.value) == (
            "Cannot open pbmissing://x: Install pb-no-such to use pbmissing. "
            "To use it, install the fsspec backend for pbmissing://."
        )

    def test_s3_without_its_plugin_warns_once_with_the_install_hint(self) -> None:
        """s3:// with no pipes-bus-s3 plugin falls back to fsspec and says what to install, once."""
        with pytest.warns(PipesBusWarning) as record:
            assert transport_class("s3://bucket/prefix") is FsspecTransport
        assert [str(w.message) for w in record] == [
            "Using the generic fsspec transport for s3://; pip install pipes-bus-s3 for its "
            "store-specific handling."
        ]
        assert transport_class("s3://bucket/other") is FsspecTransport  # no second warning

    @pytest.mark.skipif(importlib.util.find_spec("s3fs") is None, reason="needs s3fs")
    def test_s3_opens_through_s3fs(self) -> None:
        """With s3fs installed, s3:// opens an S3 filesystem rooted at bucket/prefix."""
        with pytest.warns(PipesBusWarning, match="pip install pipes-bus-s3"):
            transport = open_transport("s3://bucket/prefix", anon=True)
        assert type(transport) is FsspecTransport
        assert transport.root == "bucket/prefix"
        assert transport.fs.dircache.use_listings_cache is False

    @pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="needs no s3fs")
    def test_s3_without_s3fs_says_what_to_install(self) -> None:
        """Without s3fs, opening s3:// raises ConfigurationError naming the plugin to install."""
        with pytest.warns(PipesBusWarning), pytest.raises(ConfigurationError) as info:
            open_transport("s3://bucket/prefix")
        assert str(info.value).endswith("To use it, pip install pipes-bus-s3.")
