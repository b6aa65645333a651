"""The error tree, and the one place lower-layer errors are translated."""

from __future__ import annotations

import errno
from typing import Any

import pytest

import pipes_bus
from pipes_bus import (
    BufferFullError,
    ConfigurationError,
    DeliveryError,
    EncodeError,
    MessageTooLargeError,
    NotInSessionError,
    ObjectTooLargeError,
    PermanentStoreError,
    PipesBusError,
    PipesBusWarning,
    StoreError,
    TransientStoreError,
    UnknownSchemeError,
    WriterClosedError,
)
from pipes_bus._errors import is_transient, store_errors, translate_store_error


def foreign_error(module: str, name: str, message: str = "", **attrs: Any) -> Exception:
    """An exception that looks as if it came from another library's ``module``."""
    cls = type(name, (Exception,), {"__module__": module})
    exc = cls(message)
    for attr, value in attrs.items():
        setattr(exc, attr, value)
    return exc


class TestErrorTree:
    """The hierarchy drawn in _errors' docstring."""

    @pytest.mark.parametrize(
        ("cls", "parent"),
        [
            (ConfigurationError, PipesBusError),
            (UnknownSchemeError, ConfigurationError),
            (NotInSessionError, ConfigurationError),
            (EncodeError, PipesBusError),
            (MessageTooLargeError, EncodeError),
            (StoreError, PipesBusError),
            (TransientStoreError, StoreError),
            (PermanentStoreError, StoreError),
            (ObjectTooLargeError, PermanentStoreError),
            (DeliveryError, PipesBusError),
            (BufferFullError, PipesBusError),
            (WriterClosedError, PipesBusError),
        ],
    )
    def test_each_error_sits_under_its_parent(self, cls: type, parent: type) -> None:
        """Every error derives from the parent the tree shows, and from PipesBusError."""
        assert issubclass(cls, parent)
        assert issubclass(cls, PipesBusError)

    def test_builtin_bases_let_callers_catch_familiar_types(self) -> None:
        """ConfigurationError is a ValueError, EncodeError a TypeError, StoreError an OSError."""
        assert issubclass(ConfigurationError, ValueError)
        assert issubclass(EncodeError, TypeError)
        assert issubclass(StoreError, OSError)

    def test_warning_is_a_user_warning(self) -> None:
        """PipesBusWarning is a UserWarning, so warning filters treat it as one."""
        assert issubclass(PipesBusWarning, UserWarning)

    def test_every_error_is_exported(self) -> None:
        """Every class in the tree is importable from pipes_bus and listed in __all__."""
        names = {
            "PipesBusError",
            "ConfigurationError",
            "UnknownSchemeError",
            "NotInSessionError",
            "EncodeError",
            "MessageTooLargeError",
            "StoreError",
            "TransientStoreError",
            "PermanentStoreError",
            "ObjectTooLargeError",
            "DeliveryError",
            "BufferFullError",
            "WriterClosedError",
            "PipesBusWarning",
        }
        assert names <= set(pipes_bus.__all__)

    def test_store_error_carries_url_and_key(self) -> None:
        """StoreError keeps url and key, and prints just its message."""
        error = TransientStoreError("it failed", url="s3://b/p", key="k")
        assert (error.url, error.key, str(error)) == ("s3://b/p", "k", "it failed")

    def test_delivery_error_counts_what_was_not_delivered(self) -> None:
        """DeliveryError.undelivered is last - first + 1, and never negative."""
        assert DeliveryError("x", first=3, last=7).undelivered == 5
        assert DeliveryError("x").undelivered == 0

    def test_too_large_names_the_object_and_the_limit(self) -> None:
        """ObjectTooLargeError.over_limit() says which object, its size, the limit, what to do."""
        error = ObjectTooLargeError.over_limit("memory://bus/", "s/streams/w/1", 2000, 1000)
        assert str(error) == (
            "memory://bus/s/streams/w/1 is 2000 bytes, over the 1000-byte limit; it was not "
            "read. Raise max_chunk_bytes if such chunks are expected."
        )
        assert (error.size, error.key, error.url) == (2000, "s/streams/w/1", "memory://bus/")


class TestIsTransient:
    """is_transient: which lower-layer failures are worth retrying."""

    @pytest.mark.parametrize(
        "exc",
        [
            TimeoutError("read timed out"),
            ConnectionResetError("reset"),
            ConnectionRefusedError("refused"),
            OSError(errno.EBUSY, "ConditionalRequestConflict"),
            OSError(errno.ETIMEDOUT, "timed out"),
            OSError("Please reduce your request rate. SlowDown"),
            foreign_error("botocore.exceptions", "ClientError", "An error occurred (503)"),
            foreign_error("somelib", "HTTPError", "boom", status=503),
            foreign_error("somelib", "HTTPError", "boom", status_code=429),
            foreign_error(
                "somelib", "ApiError", "x", response={"ResponseMetadata": {"HTTPStatusCode": 500}}
            ),
            foreign_error("aiohttp.client_exceptions", "ClientPayloadError", "odd"),
            TransientStoreError("already sorted"),
        ],
        ids=lambda e: f"{type(e).__name__}:{e}",
    )
    def test_transient_failures(self, exc: BaseException) -> None:
        """Timeouts, resets, throttling, 5xx, 408/409/429 and unknown network-library errors retry."""
        assert is_transient(exc) is True

    @pytest.mark.parametrize(
        "exc",
        [
            FileNotFoundError("gone"),
            PermissionError("no"),
            OSError(errno.EACCES, "denied"),
            OSError(errno.ENOSPC, "full"),
            foreign_error("botocore.exceptions", "ClientError", "AccessDenied: timeout"),
            foreign_error("somelib", "NoSuchBucket", "The specified bucket does not exist"),
            foreign_error("somelib", "HTTPError", "boom", status=404),
            PermanentStoreError("already sorted"),
            ValueError("a bug, not the store"),
        ],
        ids=lambda e: f"{type(e).__name__}:{e}",
    )
    def test_permanent_failures(self, exc: BaseException) -> None:
        """Missing things, denied access and plain bugs do not retry; denial beats "timeout"."""
        assert is_transient(exc) is False


class TestTranslation:
    """translate_store_error and store_errors: lower-layer errors become StoreErrors."""

    def test_transient_errors_become_transient_store_errors(self) -> None:
        """A transient error is a TransientStoreError naming the operation, URL and key."""
        error = translate_store_error(
            ConnectionResetError("reset by peer"), url="s3://b/root/", key="s/x", op="read"
        )
        assert type(error) is TransientStoreError
        assert str(error) == (
            "Cannot read s3://b/root/s/x: the store had a transient failure "
            "(ConnectionResetError: reset by peer)."
        )
        assert (error.url, error.key) == ("s3://b/root/", "s/x")

    def test_permanent_errors_become_permanent_store_errors(self) -> None:
        """A permanent error is a PermanentStoreError saying what to check."""
        error = translate_store_error(PermissionError("denied"), url="/bus", key=None, op="list")
        assert type(error) is PermanentStoreError
        assert str(error) == (
            "Cannot list /bus: PermissionError: denied. Check that the location exists and "
            "that the credentials in this environment may read and write it."
        )

    def test_store_errors_pass_through_unchanged(self) -> None:
        """An error that is already a StoreError is returned as it is."""
        error = PermanentStoreError("x")
        assert translate_store_error(error, url="u", key="k", op="read") is error

    def test_store_errors_block_translates_and_chains(self) -> None:
        """Inside store_errors(), a lower-layer error is raised as a StoreError from it."""
        cause = TimeoutError("slow")
        with pytest.raises(TransientStoreError) as info, store_errors(url="u", key="k", op="write"):
            raise cause
        assert info.value.__cause__ is cause

    @pytest.mark.parametrize(
        "exc",
        [
            FileExistsError("taken"),
            ImportError("Install s3fs to access S3"),
            TransientStoreError("already translated"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_store_errors_block_lets_some_errors_through(self, exc: Exception) -> None:
        """FileExistsError (put-if-absent), ImportError (install hints) and StoreErrors leave
        store_errors() as they are."""
        with pytest.raises(type(exc)) as info, store_errors(url="u", key="k", op="write"):
            raise exc
        assert info.value is exc

    def test_store_errors_block_translates_anything_else(self) -> None:
        """Any other exception becomes a StoreError naming the operation and the key."""
        with (
            pytest.raises(PermanentStoreError, match="Cannot write u/k: ValueError: bad"),
            store_errors(url="u", key="k", op="write"),
        ):
            raise ValueError("bad")
