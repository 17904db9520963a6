"""Upstream API keys encrypted at rest with Fernet, and how they are masked for display.

The Fernet key comes from ``BRIDGEKEEPER_SECRET_KEY`` or a file created with mode
0600 beside the SQLite database (or in the working directory for other databases).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def mask(secret: str) -> str:
    """Only the last 4 characters are ever shown again."""
    return "…" + secret[-4:] if len(secret) > 4 else "…"


def redactable(secret: str | None) -> bytes | None:
    """``secret`` as the bytes `redact` looks for; None for one too short to mask safely."""
    return secret.encode("utf-8") if secret and len(secret) >= 8 else None


def redact(data: bytes, secret: str | None) -> bytes:
    """``data`` with every copy of ``secret`` masked: some upstreams echo the key they were
    sent in their error messages, which must reach no log, database row or client."""
    found = redactable(secret)
    if found is None or secret is None:
        return data
    return data.replace(found, mask(secret).encode("utf-8"))


def redact_text(text: str, secret: str | None) -> str:
    """`redact` for text."""
    if secret is None or redactable(secret) is None:
        return text
    return text.replace(secret, mask(secret))


class SecretKeyError(ValueError):
    """The Fernet key is malformed, or is not the one the stored upstream keys need; the
    message is one line for the operator and never holds a key."""


def key_problem(key: str | bytes) -> str | None:
    """Why ``key`` is not a Fernet key (the key itself is never in the answer), or None."""
    try:
        Fernet(key)
    except (ValueError, TypeError):
        return "not a Fernet key (32 url-safe base64-encoded bytes, as Fernet.generate_key() makes)"
    return None


def key_file_for(db_path: Path | None) -> Path:
    if db_path is not None:
        return db_path.with_name(db_path.name + ".secret")
    return Path("bridgekeeper.secret")


def load_or_create_key(configured: str | None, path: Path) -> bytes:
    """The configured key, else the one in ``path``, else a new one written there as 0600."""
    if configured:
        return configured.encode()
    if path.exists():
        key = path.read_bytes().strip()
        problem = key_problem(key)
        if problem:
            raise SecretKeyError(f"{path}: {problem}")
        return key
    key = Fernet.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key


class SecretBox:
    """Encrypts and decrypts upstream secrets."""

    def __init__(self, key: bytes) -> None:
        problem = key_problem(key)
        if problem:  # checked by `Settings` and `load_or_create_key`; this is the last guard
            raise SecretKeyError(f"the secret key is {problem}")
        self._fernet = Fernet(key)

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretKeyError(
                "an upstream key cannot be decrypted: BRIDGEKEEPER_SECRET_KEY or the "
                "secret file changed since it was stored"
            ) from None
