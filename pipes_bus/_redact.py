"""Scrub credentials out of text before it reaches a log, an event, an error or the bus."""

from __future__ import annotations

import os
import re

__all__ = ["redact"]

# Each pattern's first group is kept; what follows it is the secret.
_PATTERNS = [
    re.compile(r"(?i)((?:AccountKey|SharedAccessSignature|SharedAccessKey)=)[^;'\"\s]+"),
    re.compile(
        r"(?i)([?&](?:sig|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature)=)"
        r"[^&'\"\s]+"
    ),
    re.compile(
        r"(?i)((?:aws_)?(?:secret_access_key|session_token|secret|password|account_key|"
        r"client_secret|sas_token|access_token|refresh_token)['\"]?\s*[:=]\s*['\"]?)"
        r"[^'\"\s,;}&]+"
    ),
    re.compile(r"(?i)(Authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
]
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
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
