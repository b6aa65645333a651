"""What the orchestrator hands a worker: the session bootstrap and the run context.

The orchestrator sets ``PIPES_BUS_SESSION`` (a compact encoding of :class:`SessionParams`)
in the worker's environment. The params name the bus URL, the session, non-secret storage
options, and where the context is: inline in ``PIPES_BUS_CONTEXT``, as an object in the
session, or in the command-line arguments. Credentials are never part of it: the worker
takes them from its own environment, the way fsspec and the cloud SDKs do.
"""

import base64
import os
import zlib
from collections.abc import Mapping
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, NotInSessionError
from pipes_bus._wire.schema import PROTOCOL_VERSION

__all__ = [
    "ARGV_FLAG",
    "CONTEXT_ENV",
    "KEY_ENV",
    "LABEL_ENV",
    "SESSION_ENV",
    "Context",
    "PartitionKeyRange",
    "PartitionTimeWindow",
    "SessionParams",
    "decode_params",
    "encode_params",
    "make_context",
    "parse_key",
]

SESSION_ENV = "PIPES_BUS_SESSION"
CONTEXT_ENV = "PIPES_BUS_CONTEXT"
KEY_ENV = "PIPES_BUS_KEY"
LABEL_ENV = "PIPES_BUS_LABEL"
ARGV_FLAG = "--pipes-bus-context"


class PartitionKeyRange(msgspec.Struct, frozen=True):
    """An inclusive range of partition keys."""

    start: str
    end: str


class PartitionTimeWindow(msgspec.Struct, frozen=True):
    """A half-open time window [start, end), as ISO-8601 strings."""

    start: str
    end: str


class Context(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the worker is asked to do: run, job, assets, partitions and free-form extras."""

    run_id: str = ""
    job_name: str | None = None
    asset_keys: list[str] = []
    partition_key: str | None = None
    partition_key_range: PartitionKeyRange | None = None
    partition_time_window: PartitionTimeWindow | None = None
    retry_number: int = 0
    code_versions: dict[str, str] = {}
    provenance: dict[str, dict[str, Any]] = {}
    extras: dict[str, Any] = {}

    @property
    def asset_key(self) -> str:
        """The one asset key; raises if there are none or several."""
        if len(self.asset_keys) != 1:
            raise ConfigurationError(
                f"The context has {len(self.asset_keys)} asset keys ({self.asset_keys}); "
                "pass asset_key= explicitly."
            )
        return self.asset_keys[0]

    def extra(self, name: str, default: Any = None) -> Any:
        """One extra by name."""
        return self.extras.get(name, default)


def make_context(
    value: Context | Mapping[str, Any] | None, *, what: str = "The context"
) -> Context:
    """A :class:`Context` from a mapping an orchestrator was given, checked strictly.

    Unknown top-level keys are refused with the list of valid ones (a misspelt key must
    not vanish), values must have the documented types, and the context must encode
    (no lone surrogates). Workers decode leniently: a newer orchestrator may add fields.
    """
    if isinstance(value, Context):
        context = value
    else:
        data = dict(value or {})
        unknown = sorted(set(data) - set(Context.__struct_fields__))
        if unknown:
            raise ConfigurationError(
                f"{what} has no member {', '.join(map(repr, unknown))}; valid members are "
                f"{', '.join(Context.__struct_fields__)}."
            )
        try:
            context = msgspec.convert(data, Context)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"{what} is invalid: {exc}.") from exc
    try:
        msgspec.json.encode(context)
    except (UnicodeEncodeError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"{what} cannot be encoded: {exc}.") from exc
    return context


def parse_key(text: str, what: str = KEY_ENV) -> bytes:
    """A session signing key from its hex form: 32 bytes (64 hex digits) at least."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(
            f"{what} is not a hexadecimal key: a session's key is 64 hex digits."
        ) from None
    if len(key) < 32:
        raise ConfigurationError(
            f"{what} holds {len(key)} bytes; a session's signing key is 32 bytes "
            "(64 hex digits). Use the key the session was opened with."
        )
    return key


class SessionParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The bootstrap a worker reads from ``PIPES_BUS_SESSION``."""

    bus: str
    session: str
    protocol: str = PROTOCOL_VERSION
    storage_options: dict[str, Any] = {}
    context: dict[str, Any] = {}  # {"via": "env"|"object"|"argv", ...}
    writer: dict[str, Any] = {}  # WriterSettings overrides (encoding, linger, ...)
    capture_output: bool = False
    signed: bool = False


def _pack(value: Any) -> str:
    return base64.urlsafe_b64encode(zlib.compress(msgspec.json.encode(value), 9)).decode()


def _unpack(text: str, type: Any, what: str) -> Any:
    try:
        return msgspec.json.decode(zlib.decompress(base64.urlsafe_b64decode(text)), type=type)
    except (ValueError, zlib.error, msgspec.DecodeError) as exc:
        raise ConfigurationError(
            f"{what} cannot be decoded ({exc}). It must be set by a pipes_bus orchestrator "
            "of the same major protocol version."
        ) from exc


def encode_params(params: SessionParams) -> str:
    """The value of ``PIPES_BUS_SESSION`` for ``params``."""
    return _pack(params)


def decode_params(env: Mapping[str, str] | None = None) -> SessionParams:
    """Read the session bootstrap from ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    text = env.get(SESSION_ENV)
    if not text:
        raise NotInSessionError(
            f"{SESSION_ENV} is not set: this process was not started by a pipes_bus session. "
            "Launch it with `pipes-bus run -- COMMAND` or a session's env, or pass "
            "allow_missing=True to run without reporting."
        )
    return _unpack(text, SessionParams, SESSION_ENV)  # type: ignore[no-any-return]


def encode_context(context: Context) -> str:
    """A context in the compact form used by the env and argv injectors."""
    return _pack(context)


def decode_context(text: str, what: str) -> Context:
    """A context from its compact form."""
    return _unpack(text, Context, what)  # type: ignore[no-any-return]
