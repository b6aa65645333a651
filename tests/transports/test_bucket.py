"""BucketTransport on its own: a dict-backed store written as a plugin author would write one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import pytest

from pipes_bus import (
    ConfigurationError,
    ObjectTooLargeError,
    PermanentStoreError,
    TransientStoreError,
)
from pipes_bus.testing.conformance import OPERATIONS, TransportConformance, call
from pipes_bus.transports import BucketTransport

# bucket -> {name: bytes}; a bucket that is not a key does not exist.
BUCKETS: dict[str, dict[str, bytes]] = {}
LOCK = threading.Lock()


class StoreFault(Exception):
    """What the pretend store library raises."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or str(status))
        self.status = status


class DictBucket(BucketTransport):
    """The whole of a plugin: six small methods on one pretend store's requests."""

    page_size = 2  # small pages, so that every listing here takes several

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        self.faults: list[StoreFault] = []  # raised by the next requests, in order

    def _store(self) -> dict[str, bytes]:
        if self.faults:
            raise self.faults.pop(0)
        if self.bucket not in BUCKETS:
            raise StoreFault(404, "NoSuchBucket")
        return BUCKETS[self.bucket]

    def _put(self, name: str, data: bytes) -> bool:
        with LOCK:
            objects = self._store()
            if name in objects:
                return False
            objects[name] = bytes(data)
        return True

    def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        objects = self._store()
        if name not in objects:
            raise StoreFault(404, "NoSuchKey")
        data = objects[name]
        if max_size is not None and len(data) > max_size:
            return len(data), None
        return len(data), data

    def _list(
        self, base: str, start_after: str | None, token: str | None
    ) -> tuple[Iterable[str], str | None]:
        with LOCK:
            names = sorted(n for n in self._store() if n.startswith(base))
        entries: list[str] = []  # objects, and a folder's prefix once, as stores list
        for name in names:
            child, slash, _ = name[len(base) :].partition("/")
            entry = base + child + slash
            if not entries or entries[-1] != entry:
                entries.append(entry)
        after = token or start_after
        entries = [e for e in entries if after is None or e > after]
        page = entries[: self.page_size or len(entries)]
        more = len(entries) > len(page)
        return page, (page[-1] if more else None)

    def _delete(self, name: str) -> None:
        with LOCK:
            if self._store().pop(name, None) is None:
                raise StoreFault(404, "NoSuchKey")

    def _walk(self, base: str, token: str | None) -> tuple[Iterable[tuple[str, int]], str | None]:
        with LOCK:
            found = sorted((n, len(d)) for n, d in self._store().items() if n.startswith(base))
        found = [f for f in found if token is None or f[0] > token]
        page = found[: self.page_size or len(found)]
        return page, (page[-1][0] if len(found) > len(page) else None)

    def _classify(self, exc: BaseException) -> str:
        if isinstance(exc, StoreFault):
            if exc.status == 404:
                return "missing_bucket" if str(exc) == "NoSuchBucket" else "missing_key"
            if exc.status == 409:
                return "conflict"
            if exc.status == 403:
                return "denied"
            return "transient" if exc.status >= 500 else "permanent"
        return super()._classify(exc)


class AmbiguousBucket(DictBucket):
    """A store whose not-found says nothing about which is missing (as GCS's 404)."""

    def _classify(self, exc: BaseException) -> str:
        verdict = super()._classify(exc)
        return "missing" if verdict in ("missing_key", "missing_bucket") else verdict

    def _probe_bucket(self, name: str) -> None:
        self._store()


def fresh_bucket() -> str:
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    BUCKETS[bucket] = {}
    return bucket


@pytest.fixture
def bucket() -> Iterator[str]:
    bucket = fresh_bucket()
    yield bucket
    BUCKETS.pop(bucket, None)


class TestDictBucketConformance(TransportConformance):
    @pytest.fixture
    def transport(self, bucket: str) -> DictBucket:
        return DictBucket(f"dict://{bucket}/some/prefix")


class TestAmbiguousBucketConformance(TransportConformance):
    @pytest.fixture
    def transport(self, bucket: str) -> AmbiguousBucket:
        return AmbiguousBucket(f"dict://{bucket}")


class TestLocation:
    @pytest.mark.parametrize(
        ("url", "bucket", "prefix"),
        [
            ("dict://b", "b", ""),
            ("dict://b/", "b", ""),
            ("dict://b/p", "b", "p"),
            ("dict://b//p/q//", "b", "p/q"),
        ],
    )
    def test_bucket_and_prefix(self, url: str, bucket: str, prefix: str) -> None:
        """scheme://BUCKET/PREFIX, slashes trimmed; keys are joined onto the prefix."""
        transport = DictBucket(url)
        assert (transport.bucket, transport.prefix) == (bucket, prefix)
        assert transport._name("/k/") == (f"{prefix}/k" if prefix else "k")

    def test_no_bucket_is_a_configuration_error(self) -> None:
        """A URL without a bucket is refused, with the form that works."""
        with pytest.raises(ConfigurationError) as info:
            DictBucket("dict://")
        assert str(info.value) == "'dict://' names no bucket; write dict://BUCKET/PREFIX."

    def test_a_client_that_cannot_be_built_is_a_configuration_error(self) -> None:
        """_opening reports a failure to build the client, its secrets redacted."""
        transport = DictBucket("dict://b")
        with pytest.raises(ConfigurationError) as info, transport._opening(" Set X."):
            raise ValueError("bad AccountKey=s3cr3t;")
        assert str(info.value) == "Cannot open dict://b: ValueError: bad AccountKey=***;. Set X."


class TestRequests:
    def test_each_operation_counts_its_requests(self, bucket: str) -> None:
        """One put, one get, one delete; a listing counts each page."""
        transport = DictBucket(f"dict://{bucket}/p")
        for n in range(5):
            assert transport.put_if_absent(f"s/{n}", b"12")
        assert transport.get("s/0") == b"12"
        transport.delete("s/0")
        transport.delete("s/0")  # missing: not an error, still a request
        assert transport.list("s") == ["1", "2", "3", "4"]
        assert transport.stats.snapshot() == {
            "requests": {"put": 5, "get": 1, "delete": 2, "list": 2},
            "bytes_sent": 10,
            "bytes_received": 2,
        }

    def test_a_listing_gives_direct_children_after_a_name(self, bucket: str) -> None:
        """Full names and folder prefixes become sorted direct children; `after` filters
        them even where the store ignores start_after."""
        transport = DictBucket(f"dict://{bucket}")
        for key in ("s/a", "s/b/x", "s/b/y", "s/c", "s/d/e/f", "t/z"):
            assert transport.put_if_absent(key, b"1")
        assert transport.list("s") == ["a", "b", "c", "d"]
        assert transport.list("s", after="b") == ["c", "d"]
        assert transport.list("") == ["s", "t"]
        assert transport.list("nothing") == []

    def test_a_walk_gives_every_object_below_with_sizes_page_by_page(self, bucket: str) -> None:
        """walk pages through _walk's (name, size) pairs, keys relative to the bus."""
        transport = DictBucket(f"dict://{bucket}/p")
        for key in ("s/a", "s/b/x", "s/b/y", "t/z"):
            assert transport.put_if_absent(key, key.encode())
        assert list(transport.walk("s")) == [("s/a", 3), ("s/b/x", 5), ("s/b/y", 5)]
        assert transport.stats.snapshot()["requests"]["list"] == 2

    def test_without_a_walk_hook_folders_are_listed_and_sizes_unknown(self, bucket: str) -> None:
        """A plugin with no _walk still walks: folder by folder, each size -1."""

        class NoWalk(DictBucket):
            _walk = BucketTransport._walk

        transport = NoWalk(f"dict://{bucket}")
        for key in ("s/a", "s/b/x", "t/z"):
            assert transport.put_if_absent(key, b"1")
        assert list(transport.walk("s")) == [("s/a", -1), ("s/b/x", -1)]

    def test_over_max_size_is_too_large_with_the_true_size(self, bucket: str) -> None:
        """data None from _get is ObjectTooLargeError naming the key, nothing received."""
        transport = DictBucket(f"dict://{bucket}")
        assert transport.put_if_absent("big", b"x" * 10)
        with pytest.raises(ObjectTooLargeError) as info:
            transport.get("big", max_size=3)
        assert (info.value.key, info.value.size) == ("big", 10)
        assert str(info.value).startswith(f"dict://{bucket}/big is 10 bytes, over the 3-byte")
        assert transport.stats.bytes_received == 0


class TestConflicts:
    def test_a_conflict_is_retried_then_decided_by_the_store(self, bucket: str) -> None:
        """With conflict_attempts, a conflicting write is retried after a pause."""
        transport = DictBucket(f"dict://{bucket}")
        transport.conflict_attempts = 3  # type: ignore[misc]
        pauses: list[float] = []
        transport.sleep = pauses.append
        transport.faults = [StoreFault(409), StoreFault(409)]
        assert transport.put_if_absent("k", b"v") is True
        assert len(pauses) == 2 and all(0 < p < 1 for p in pauses)
        assert transport.stats.snapshot()["requests"] == {"put": 3}

    def test_without_retries_a_conflict_is_transient(self, bucket: str) -> None:
        """By default a conflict is one request and a TransientStoreError."""
        transport = DictBucket(f"dict://{bucket}")
        transport.faults = [StoreFault(409, "Conflict")]
        with pytest.raises(TransientStoreError) as info:
            transport.put_if_absent("k", b"v")
        assert str(info.value) == (
            f"Cannot write dict://{bucket}/k: the store had a transient failure "
            "(StoreFault: Conflict)."
        )
        assert transport.stats.total == 1


class TestErrors:
    @pytest.mark.parametrize("op", OPERATIONS)
    def test_a_missing_bucket_is_permanent_at_once(self, op: str) -> None:
        """Every operation on a missing bucket: one request, PermanentStoreError."""
        transport = DictBucket("dict://nope/p")
        with pytest.raises(PermanentStoreError) as info:
            call(transport, op)
        assert transport.stats.total == 1
        where = "dict://nope/p" + ("" if op == "list" else "/k")
        verb = {"put": "write", "get": "read", "list": "list", "delete": "delete"}[op]
        assert str(info.value) == (
            f"Cannot {verb} {where}: the bucket 'nope' does not exist, or these credentials "
            "cannot see it. Create the bucket or correct the bus URL."
        )
        assert (info.value.url, info.value.key) == ("dict://nope/p", None if op == "list" else "k")

    @pytest.mark.parametrize("op", OPERATIONS)
    def test_denied_is_permanent_with_the_credentials_hint(self, bucket: str, op: str) -> None:
        """A refusal says what to check, in the transport's own words."""

        class Hinted(DictBucket):
            credentials_hint: ClassVar[str] = "Check DICT_KEY."

        transport = Hinted(f"dict://{bucket}")
        transport.faults = [StoreFault(403, "Forbidden token=abc123")]
        with pytest.raises(PermanentStoreError) as info:
            call(transport, op)
        assert "access was refused (StoreFault: Forbidden token=***). Check DICT_KEY." in str(
            info.value
        )

    @pytest.mark.parametrize("op", OPERATIONS)
    def test_transient_and_unknown_failures(self, bucket: str, op: str) -> None:
        """A 5xx is transient; a failure the classifier does not know is judged by the
        core's generic rules (a timeout is transient, a ValueError permanent)."""
        transport = DictBucket(f"dict://{bucket}")
        transport.faults = [StoreFault(503)]
        with pytest.raises(TransientStoreError):
            call(transport, op)
        transport.faults = [TimeoutError("timed out")]  # type: ignore[list-item]
        with pytest.raises(TransientStoreError):
            call(transport, op)
        transport.faults = [ValueError("invalid name")]  # type: ignore[list-item]
        with pytest.raises(PermanentStoreError) as info:
            call(transport, op)
        assert "ValueError: invalid name. Check that the location exists" in str(info.value)

    def test_a_store_error_from_a_subclass_is_raised_as_it_is(self, bucket: str) -> None:
        """A subclass may raise pipes_bus's own errors: they are neither wrapped nor taken
        for a missing object."""
        transport = DictBucket(f"dict://{bucket}")
        own = PermanentStoreError("mine", url=transport.url, key="k")
        transport.faults = [own]  # type: ignore[list-item]
        with pytest.raises(PermanentStoreError) as info:
            transport.get("k")
        assert info.value is own


class TestAmbiguousNotFound:
    def test_the_first_miss_probes_the_bucket_once(self, bucket: str) -> None:
        """An ambiguous not-found costs one probe, the first time only."""
        transport = AmbiguousBucket(f"dict://{bucket}")
        assert transport.get("a") is None
        assert transport.get("b") is None
        transport.delete("c")
        assert transport.stats.snapshot()["requests"] == {"get": 2, "list": 1, "delete": 1}

    def test_a_request_that_succeeded_makes_the_probe_needless(self, bucket: str) -> None:
        """Once any request succeeded, the bucket exists: a miss is one request."""
        transport = AmbiguousBucket(f"dict://{bucket}")
        assert transport.put_if_absent("k", b"v")
        assert transport.get("a") is None
        assert transport.stats.snapshot()["requests"] == {"put": 1, "get": 1}

    @pytest.mark.parametrize(("op", "requests"), [("get", 2), ("delete", 2), ("put", 1)])
    def test_a_missing_bucket_is_found_by_the_probe(self, op: str, requests: int) -> None:
        """A not-found and then a failed probe is a missing bucket; a write or a listing
        cannot miss an object, so it needs no probe."""
        transport = AmbiguousBucket("dict://nope")
        with pytest.raises(PermanentStoreError, match="the bucket 'nope' does not exist"):
            call(transport, op)
        assert transport.stats.total == requests

    def test_a_probe_that_cannot_tell_takes_the_miss_as_no_object(self, bucket: str) -> None:
        """A probe refused for another reason (no list permission, say): no object."""
        transport = AmbiguousBucket(f"dict://{bucket}")
        transport.faults = [StoreFault(404), StoreFault(403)]
        assert transport.get("a") is None
        assert transport.get("b") is None  # probed again: the bucket was never confirmed
        assert transport.stats.snapshot()["requests"] == {"get": 2, "list": 2}
