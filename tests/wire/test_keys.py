"""Where things live on a bus, and which ids are allowed."""

from __future__ import annotations

import pytest

from pipes_bus import ConfigurationError
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.keys import (
    chunk_key,
    chunk_number,
    is_id,
    new_id,
    sanitize,
    stream_prefix,
    streams_prefix,
    validate_id,
)

GOOD_IDS = ["a", "0", "w-1a2b.rank_3", "S.1", "x" * 128]
BAD_IDS = ["", ".hidden", "-x", "_x", "a/b", "a b", "a..b", "..", "x" * 129, "é", "a\n"]


class TestIds:
    """validate_id, is_id and sanitize."""

    @pytest.mark.parametrize("value", GOOD_IDS)
    def test_safe_ids_are_accepted(self, value: str) -> None:
        """1-128 characters of A-Z a-z 0-9 . _ -, starting alphanumeric, are valid ids."""
        assert validate_id("writer id", value) == value
        assert is_id(value)

    @pytest.mark.parametrize("value", BAD_IDS)
    def test_unsafe_ids_are_refused(self, value: str) -> None:
        """Anything that could leave its path segment, or is empty or too long, is refused."""
        assert not is_id(value)
        with pytest.raises(ConfigurationError) as info:
            validate_id("session id", value)
        assert str(info.value) == (
            f"session id {value!r} is not a valid id: use 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit, with no '..'."
        )

    def test_non_strings_are_refused(self) -> None:
        """An id that is not a str raises ConfigurationError, not TypeError."""
        with pytest.raises(ConfigurationError):
            validate_id("writer id", 7)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("label", "fragment"),
        [
            ("rank 3", "rank-3"),
            ("gpu:0/part 1", "gpu-0-part-1"),
            ("a...b", "a.b"),
            ("a....b", "a.b"),
            ("..weird..", "weird"),
            ("___", "x"),
            ("", "x"),
            ("ü", "x"),
        ],
    )
    def test_sanitize_makes_any_label_safe(self, label: str, fragment: str) -> None:
        """Unsafe runs become one '-', dot runs one '.', and the ends are trimmed."""
        assert sanitize(label) == fragment

    def test_sanitize_truncates(self) -> None:
        """A sanitized fragment is at most ``limit`` characters."""
        assert sanitize("abcdef", limit=4) == "abcd"


class TestNewId:
    """new_id: fresh ids that sort by creation time."""

    def test_ids_are_valid_and_carry_prefix_and_label(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An id is prefix-time-pid-random[-label], and always a valid id."""
        monkeypatch.setattr(_keys.time, "time", lambda: 1.0)
        monkeypatch.setattr(_keys.os, "getpid", lambda: 42)
        monkeypatch.setattr(_keys.secrets, "token_hex", lambda n: "ab" * n)
        assert new_id("w", "rank...3 of 8") == "w-000000003e8-42-abababab-rank.3-of-8"
        assert new_id("s") == "s-000000003e8-42-abababab"
        assert is_id(new_id("w", "/" * 200))

    def test_ids_sort_by_creation_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An id made later sorts after one made earlier."""
        times = iter([1_700_000_000.0, 1_700_000_000.5])
        monkeypatch.setattr(_keys.time, "time", lambda: next(times))
        first, second = new_id("w"), new_id("w")
        assert first < second

    def test_ids_are_unique(self) -> None:
        """A thousand ids made at once are all different."""
        assert len({new_id("w") for _ in range(1000)}) == 1000


class TestLayout:
    """Key layout: bus, session, streams, writer, 20-digit chunks."""

    def test_keys_nest_session_streams_writer_chunk(self) -> None:
        """Chunk keys are {session}/streams/{writer}/{chunk:020d}."""
        assert streams_prefix("s1") == "s1/streams"
        assert stream_prefix("s1", "w1") == "s1/streams/w1"
        assert chunk_key("s1", "w1", 7) == "s1/streams/w1/00000000000000000007"

    def test_chunk_names_sort_in_chunk_order(self) -> None:
        """Zero padding makes the lexical order of chunk keys their numeric order."""
        numbers = [0, 9, 10, 99, 100, 10**19]
        assert sorted(chunk_key("s", "w", n) for n in reversed(numbers)) == [
            chunk_key("s", "w", n) for n in numbers
        ]

    @pytest.mark.parametrize(
        ("name", "number"),
        [
            ("00000000000000000000", 0),
            ("00000000000000000042", 42),
            ("0000000000000000042", None),
            ("000000000000000000042", None),
            ("0000000000000000004a", None),
            ("README", None),
            (".tmp-00000000000000000001", None),
        ],
    )
    def test_chunk_number_reads_only_chunk_names(self, name: str, number: int | None) -> None:
        """chunk_number parses exactly-20-digit names and nothing else."""
        assert chunk_number(name) == number
