"""Proxy keys (generation, SHA-256 hashing, the in-memory lookup table) and admin passwords.

The hot path never touches the database: `KeyTable` holds every key's hash and
limits, and is replaced whole whenever keys change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from app.errors import ForbiddenError, UnauthorizedError

KEY_PREFIX = "bk-"
DISPLAY_PREFIX_LEN = 10
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def generate_key() -> str:
    """A new proxy key: ``bk-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that may be shown again, e.g. ``bk-AbCdEfG``."""
    return key[:DISPLAY_PREFIX_LEN]


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64); slow on purpose: call it off the event loop."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    salt_b64 = base64.b64encode(salt).decode()
    digest_b64 = base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt_b64}${digest_b64}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway knows about one proxy key while serving."""

    id: int
    name: str
    key_hash: str
    prefix: str
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] = ()
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, model: str) -> bool:
        """Whether ``model`` matches one of the key's globs (none = all). An inline name's
        parameters (``oa:gpt-4o?temperature=0.2``) are not part of what is matched: the key
        ``*-mini`` took ``oa:gpt-4o?a=-mini``."""
        if not self.models:
            return True
        if "?" in model:
            model = model.partition("?")[0]
        return any(fnmatchcase(model, glob) for glob in self.models)

    def check_model(self, model: str) -> None:
        """ForbiddenError unless the key `allows` ``model``."""
        if not self.allows(model):
            raise ForbiddenError(
                f"This key may not use model {model!r}; allowed: {', '.join(self.models)}"
            )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The proxy key from ``Authorization: Bearer`` or ``x-api-key``."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("X-Api-Key")
    if key and key.strip():
        return key.strip()
    return None


def second_key(headers: Mapping[str, str]) -> str | None:
    """``x-api-key`` when a request also carries a different Bearer token (the one
    `presented_key` takes): an SDK given both an API key and an auth token sends both, and
    either may be the proxy key."""
    key = headers.get("X-Api-Key")
    if not key or not key.strip():
        return None
    key = key.strip()
    return key if presented_key(headers) != key else None


class KeyTable:
    """Key hash -> KeyRecord, replaced whole when keys change."""

    __slots__ = ("_by_hash", "_seen")

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        # Presented key -> its record, for keys that matched since the table last changed:
        # a SHA-256 per request was ~7 µs of the gateway's hot path.
        self._seen: dict[str, KeyRecord] = {}
        self.replace(records)

    def replace(self, records: Iterable[KeyRecord]) -> None:
        self._by_hash = {r.key_hash: r for r in records}
        self._seen = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, key_hash: str) -> bool:
        return key_hash in self._by_hash

    def add(self, record: KeyRecord) -> None:
        """``record`` in, and any other secret of the same key out: a key rotated by another
        process stops working once its new secret is seen, not only at the next refresh."""
        others = {h: r for h, r in self._by_hash.items() if r.id != record.id}
        self._by_hash = {**others, record.key_hash: record}
        self._seen = {}

    def authenticate(self, key: str | None, now: Callable[[], datetime]) -> KeyRecord:
        """The active record for ``key`` (``now`` is read only for a key that can expire).

        UnauthorizedError when the key is missing, unknown, revoked or expired.
        """
        if not key:
            raise UnauthorizedError(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        record = self._seen.get(key)
        if record is None:
            digest = hash_key(key)
            record = self._by_hash.get(digest)
            if record is None or not hmac.compare_digest(record.key_hash, digest):
                raise UnauthorizedError("Invalid API key")
            if len(self._seen) >= 10000:
                self._seen = {}
            self._seen[key] = record
        refusal = None
        if record.revoked_at is not None:
            refusal = UnauthorizedError(f"API key {record.prefix}... has been revoked")
        elif record.expires_at is not None and record.expires_at <= now():
            refusal = UnauthorizedError(
                f"API key {record.prefix}... has expired "
                f"(its last day was {record.expires_at - timedelta(days=1):%Y-%m-%d})"
            )
        if refusal is not None:
            refusal.key = record
            raise refusal
        return record
