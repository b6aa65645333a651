"""Keep credentials and terminal control out of what pipes_bus shows and hands on.

- :func:`redact` scrubs credentials out of text before it reaches a log, an error or a
  terminal;
- :func:`public_options` keeps only the storage options known to be safe to hand to a
  worker (an allow-list: an option nobody vetted may be a secret);
- :func:`printable` makes worker-supplied text safe to print: control characters,
  newlines and bidirectional overrides are shown as escapes, so a worker cannot forge
  lines or drive the terminal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["printable", "public_options", "redact"]

# Each pattern's first group is kept; what follows it is the secret.
_PATTERNS = [
    re.compile(r"(?i)((?:AccountKey|SharedAccessSignature|SharedAccessKey)=)[^;'\"\s]+"),
    re.compile(
        r"(?i)([?&](?:sig|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature)=)"
        r"[^&'\"\s]+"
    ),
    re.compile(
        r"(?i)((?:aws_)?(?:secret_access_key|session_token|secret|password|passwd|passphrase|"
        r"account_key|client_secret|sas_token|access_token|refresh_token|api[_-]?key|"
        r"private[_-]?key|token)['\"]?\s*[:=]\s*['\"]?)"
        r"[^'\"\s,;}&]+"
    ),
    re.compile(r"(?i)((?:Proxy-)?Authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
    # The password of a URL's userinfo: scheme://user:PASSWORD@host
    # (a password may hold "/": AWS secret keys do)
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^\s@'\"]+(?=@)"),
]
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "PIPES_BUS_KEY",
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


# --- storage options a worker may be given ---------------------------------------------------

# Options of fsspec, s3fs, gcsfs, adlfs and obstore that configure where and how to connect,
# never who connects. Anything else stays with the orchestrator: the worker takes its
# credentials from its own environment.
_PUBLIC = frozenset(
    {
        # fsspec
        "use_listings_cache",
        "skip_instance_cache",
        "listings_expiry_time",
        "auto_mkdir",
        "fsync",
        # s3fs
        "anon",
        "endpoint_url",
        "requester_pays",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "version_aware",
        "cache_regions",
        "use_ssl",
        "profile",
        "max_concurrency",
        "fixed_upload_size",
        "region_name",
        "region",
        # gcsfs
        "project",
        "access",
        "consistency",
        "cache_timeout",
        "default_location",
        "requests_timeout",
        "timeout",
        "check_connection",
        # adlfs
        "account_name",
        "account_host",
        "blocksize",
        "assume_container_exists",
        "connection_timeout",
        "read_timeout",
        "location_mode",
        # obstore
        "allow_http",
        "virtual_hosted_style_request",
        "skip_signature",
        "use_emulator",
    }
)
# Nested option groups, and the members of each that may travel.
_PUBLIC_NESTED = {
    "client_kwargs": frozenset({"region_name", "endpoint_url", "verify", "use_ssl", "api_version"}),
    "config_kwargs": frozenset(
        {
            "signature_version",
            "s3",
            "retries",
            "connect_timeout",
            "read_timeout",
            "max_pool_connections",
            "region_name",
            "request_checksum_calculation",
            "response_checksum_validation",
        }
    ),
    "client_options": frozenset({"timeout", "connect_timeout", "allow_http"}),
}
# A value that names a kind of login, not a login: gcsfs's token="anon" and the like.
_PUBLIC_VALUES = {"token": frozenset({"anon", "google_default", "cloud", "browser"})}


def public_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The storage options a worker may be handed, and the names of those left out."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in options.items():
        if name in _PUBLIC and not isinstance(value, Mapping):
            kept[name] = value
        elif name in _PUBLIC_NESTED and isinstance(value, Mapping):
            allowed = _PUBLIC_NESTED[name]
            inner = {k: v for k, v in value.items() if k in allowed}
            dropped += [f"{name}.{k}" for k in value if k not in allowed]
            kept[name] = inner
        elif value is None or (isinstance(value, str) and value in _PUBLIC_VALUES.get(name, ())):
            kept[name] = value
        else:
            dropped.append(name)
    return kept, dropped


# --- text that is safe to print ---------------------------------------------------------------

_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def printable(text: str) -> str:
    """``text`` as one line with every control character shown as an escape."""
    return _UNPRINTABLE.sub(_escape, text)
