"""BucketTransport: what every object-store transport shares, around the store's own requests."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, NoReturn

from pipes_bus._errors import (
    ConfigurationError,
    ObjectTooLargeError,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    is_transient,
)
from pipes_bus._redact import redact
from pipes_bus.transports._base import Transport

__all__ = ["BucketTransport"]

_MISSING = frozenset({"missing", "missing_key", "missing_bucket"})


class BucketTransport(Transport):
    """A transport for a store of buckets that holds objects by name: ``scheme://BUCKET/PREFIX``.

    Everything but the requests themselves is here: parsing the URL, joining keys onto the
    prefix, counting requests in :attr:`stats`, the ``max_size`` bound, turning listings
    into sorted direct children, a missing object that reads as ``None`` and deletes
    quietly, and one wording for every error. A subclass makes the store's requests, each
    one request to the store, on full object names (prefix included):

    ``_put(name, data) -> bool``
        Create ``name`` holding ``data`` only if it does not exist (a conditional write):
        True, or False (or a failure :meth:`_classify` calls ``"exists"``) if it does.
    ``_get(name, max_size) -> (size, data)``
        Read the object; with a ``max_size``, at most ``max_size + 1`` bytes (a ranged
        read). ``data`` is None when the object is over ``max_size``, and ``size`` is then
        its size (as the store reports it, at least ``max_size + 1``). A missing object
        raises whatever the store library raises.
    ``_list(base, start_after, token) -> (names, next_token)``
        One page of the names that start with ``base`` (which is ``""`` or ends in "/"),
        objects and folder prefixes alike, in full; the store may start after
        ``start_after`` (a full name, or None), and may ignore it: the answer is filtered
        here. ``next_token`` asks for the next page; None (or "") when there is none.
        Honour :attr:`page_size` where the store lets a request say.
    ``_delete(name) -> None``
        Delete the object.
    ``_classify(exc) -> str``
        What a failure means: ``"exists"``, ``"missing_key"`` (no such object),
        ``"missing_bucket"``, ``"missing"`` (a not-found that may be either: see
        :meth:`_probe_bucket`), ``"conflict"`` (a concurrent conditional write: retried
        :attr:`conflict_attempts` times), ``"denied"``, ``"transient"`` or ``"permanent"``.
        The default understands the built-in exceptions and generic network failures;
        override it with the store's codes.

    Optional: :meth:`_detail` (the words of a failure in messages), :meth:`_location`
    (for URL forms other than ``scheme://BUCKET/PREFIX``), :meth:`_probe_bucket`, and the
    class attributes below. :meth:`~pipes_bus.transports.Transport.close` releases the
    client. Then run :class:`pipes_bus.testing.conformance.BucketConformance`.
    """

    #: What the store calls a bucket, for messages ("container" on Azure).
    bucket_word: ClassVar[str] = "bucket"
    #: The sentence that follows "access was refused (...)": which credentials to check.
    credentials_hint: ClassVar[str] = (
        "Check the credentials this process uses and that they may read and write this location."
    )
    #: Attempts at one conditional write while the store answers "conflict".
    conflict_attempts: ClassVar[int] = 1
    #: Names per listing request; None leaves it to the store (and its maximum).
    page_size: int | None = None

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        bucket, _, prefix = self._location(url).strip("/").partition("/")
        if not bucket:
            scheme = url.partition("://")[0] or "scheme"
            word = self.bucket_word.upper()
            raise ConfigurationError(
                f"{url!r} names no {self.bucket_word}; write {scheme}://{word}/PREFIX."
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        #: How conflict retries wait; replaceable in tests.
        self.sleep: Callable[[float], None] = time.sleep
        self._bucket_seen = False  # a request succeeded, so the bucket exists

    # --- what a subclass provides ----------------------------------------------------

    def _put(self, name: str, data: bytes) -> bool:
        raise NotImplementedError

    def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        raise NotImplementedError

    def _list(
        self, base: str, start_after: str | None, token: str | None
    ) -> tuple[Iterable[str], str | None]:
        raise NotImplementedError

    def _delete(self, name: str) -> None:
        raise NotImplementedError

    def _walk(self, base: str, token: str | None) -> tuple[Iterable[tuple[str, int]], str | None]:
        """Optional: one page of every object whose name starts with ``base``, at any depth,
        with its size, and the next page's token. Without it, :meth:`walk` lists folder by
        folder and cannot tell sizes."""
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> str:
        """What a failure means (see the class docstring for the verdicts)."""
        if isinstance(exc, FileExistsError):
            return "exists"
        if isinstance(exc, FileNotFoundError):
            return "missing_key"
        if isinstance(exc, PermissionError):
            return "denied"
        return "transient" if is_transient(exc) else "permanent"

    def _detail(self, exc: BaseException) -> str:
        """A failure in a few words, for messages (credentials are redacted afterwards)."""
        text = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(": ")
        return text if len(text) <= 300 else text[:297] + "..."

    def _location(self, url: str) -> str:
        """``BUCKET/PREFIX`` from the URL; override for other URL forms."""
        return url.partition("://")[2] if "://" in url else url

    def _probe_bucket(self, name: str) -> None:
        """One cheap request that fails as :meth:`_classify` calls ``"missing"`` or
        ``"missing_bucket"`` if the bucket does not exist (a listing of at most one name
        starting with ``name``, say). Needed only by stores whose not-found cannot tell a
        missing object from a missing bucket; it is made once per transport, at its first
        miss, and counted as a ``list``."""
        raise NotImplementedError

    # --- the four operations ---------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes) -> bool:
        name = self._name(key)
        attempt = 0
        while True:
            attempt += 1
            self.stats.count("put", sent=len(data))
            try:
                created = self._put(name, data)
            except Exception as exc:
                verdict = self._verdict(exc)
                if verdict == "conflict" and attempt < self.conflict_attempts:
                    # Another conditional write to this key is in flight; its outcome
                    # decides ours, usually within milliseconds.
                    self.sleep(random.uniform(0.5, 1.0) * 0.025 * 2**attempt)
                    continue
                if verdict != "exists":
                    self._raise(exc, key, "write", verdict)
                created = False
            self._bucket_seen = True
            return bool(created)

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        try:
            size, data = self._get(self._name(key), max_size)
        except Exception as exc:
            self.stats.count("get")
            self._absent(exc, key, "read")
            return None
        self.stats.count("get", received=len(data) if data is not None else 0)
        self._bucket_seen = True
        if data is None or (max_size is not None and len(data) > max_size):
            size = max(size, len(data or b""))
            raise ObjectTooLargeError.over_limit(self.url, key, size, max_size or 0)
        return data

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        base = self._name(prefix)
        base = f"{base}/" if base else ""
        start = base + after if after is not None else None
        names: set[str] = set()
        token: str | None = None
        while True:
            self.stats.count("list")
            try:
                page, token = self._list(base, start, token)
                names.update(name[len(base) :].rstrip("/") for name in page)
            except Exception as exc:
                self._raise(exc, prefix, "list")
            self._bucket_seen = True
            if not token:
                break
        names.discard("")
        return sorted(n for n in names if "/" not in n and (after is None or n > after))

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        try:
            self._delete(self._name(key))
        except Exception as exc:
            self._absent(exc, key, "delete")
            return
        self._bucket_seen = True

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        if type(self)._walk is BucketTransport._walk:
            yield from super().walk(prefix)
            return
        base = self._name(prefix)
        base = f"{base}/" if base else ""
        root = self._name("")
        root = f"{root}/" if root else ""
        token: str | None = None
        while True:
            self.stats.count("list")
            try:
                page, token = self._walk(base, token)
                found = [(name[len(root) :], size) for name, size in page]
            except Exception as exc:
                self._raise(exc, prefix, "list")
            self._bucket_seen = True
            yield from found
            if not token:
                return

    # --- the shared machinery --------------------------------------------------------

    def _name(self, key: str) -> str:
        """The object name of ``key``: the prefix joined on."""
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    @contextlib.contextmanager
    def _opening(self, hint: str = "") -> Iterator[None]:
        """Report a failure to build the store's client as a ConfigurationError (an
        ImportError goes on to ``open_transport``, which says what to install)."""
        try:
            yield
        except (ImportError, ConfigurationError):
            raise
        except Exception as exc:
            detail = redact(f"{type(exc).__name__}: {exc}")
            raise ConfigurationError(f"Cannot open {self.url}: {detail}.{hint}") from exc

    def _verdict(self, exc: BaseException) -> str:
        """:meth:`_classify`, except that pipes_bus's own errors mean what they say."""
        if isinstance(exc, StoreError):
            return "transient" if isinstance(exc, TransientStoreError) else "permanent"
        return self._classify(exc)

    def _absent(self, exc: Exception, key: str, op: str) -> None:
        """Return if ``exc`` says the object does not exist (in a bucket that does);
        raise the StoreError it amounts to otherwise."""
        verdict = self._verdict(exc)
        if verdict == "missing_key":
            return
        if verdict == "missing":
            self._check_bucket(key, op, exc)
            return
        self._raise(exc, key, op, verdict)

    def _check_bucket(self, key: str, op: str, cause: BaseException) -> None:
        """After an ambiguous not-found, raise if it is the bucket that is missing; once."""
        if self._bucket_seen:
            return
        self.stats.count("list")
        try:
            self._probe_bucket(self._name(key))
        except Exception as exc:
            if self._verdict(exc) in _MISSING:
                raise self._missing_bucket(key, op) from cause
            return  # cannot tell (no list permission, say): take it as "no object"
        self._bucket_seen = True

    def _raise(
        self, exc: Exception, key: str | None, op: str, verdict: str | None = None
    ) -> NoReturn:
        """Raise what ``exc`` amounts to (called while handling it)."""
        error = self._error(exc, key, op, verdict)
        if error is exc:
            raise exc
        raise error from exc

    def _error(
        self, exc: BaseException, key: str | None, op: str, verdict: str | None = None
    ) -> StoreError:
        """The pipes_bus error for a failed request: transient or permanent, naming the
        URL and key, and saying what to check."""
        if isinstance(exc, StoreError):
            return exc
        verdict = verdict or self._verdict(exc)
        key = key or None
        # A write or a listing cannot fail for want of an object: it is the bucket.
        if verdict == "missing_bucket" or (verdict in _MISSING and op in ("write", "list")):
            return self._missing_bucket(key, op)
        where = self.describe(key or "")
        detail = redact(self._detail(exc))
        if verdict == "denied":
            return PermanentStoreError(
                f"Cannot {op} {where}: access was refused ({detail}). {self.credentials_hint}",
                url=self.url,
                key=key,
            )
        if verdict in ("transient", "conflict"):
            return TransientStoreError(
                f"Cannot {op} {where}: the store had a transient failure ({detail}).",
                url=self.url,
                key=key,
            )
        return PermanentStoreError(
            f"Cannot {op} {where}: {detail}. Check that the location exists and that the "
            "credentials in this environment may read and write it.",
            url=self.url,
            key=key,
        )

    def _missing_bucket(self, key: str | None, op: str) -> PermanentStoreError:
        word = self.bucket_word
        return PermanentStoreError(
            f"Cannot {op} {self.describe(key or '')}: the {word} {self.bucket!r} does not "
            f"exist, or these credentials cannot see it. Create the {word} or correct the "
            "bus URL.",
            url=self.url,
            key=key or None,
        )
