"""Identifiers that cross dialects: tool-call ids, tool names, message ids.

Both are stateless and deterministic, because clients echo ids and names back in
later requests (PROTOCOL.md §6.10): the same input always gives the same output.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable

_ID_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_ID_BAD_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOL_NAME = 64


def _hash8(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]


def sanitize_tool_id(tool_id: str) -> str:
    """``tool_id`` made to match ``^[A-Za-z0-9_-]+$``; unchanged when it already does.

    Replaced characters become ``_`` and an 8-hex hash of the original is appended,
    so ``functions.Bash:0`` and ``functions_Bash_0`` never collide.
    """
    if tool_id and _ID_OK.match(tool_id):
        return tool_id
    if not tool_id:
        return "toolu_" + _hash8("")
    return _ID_BAD_CHAR.sub("_", tool_id) + "_" + _hash8(tool_id)


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def mistral_tool_id(tool_id: str) -> str:
    """``tool_id`` in the grammar of Mistral-family backends (mistral-common, vLLM's
    ``MistralToolCall``): nine letters and digits. Their own ids stay as they are; any
    other becomes the first nine base-62 digits of its SHA-256, the same every time, so a
    call and its result still pair up in every later request (PROTOCOL.md §6.10)."""
    if _MISTRAL_ID.match(tool_id):
        return tool_id
    number = int.from_bytes(hashlib.sha256(tool_id.encode("utf-8")).digest()[:8], "big")
    digits = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(digits)


# Ids must be unique, not secret: a generator seeded once from the OS (``secrets`` asked
# the kernel for every id, a system call each: two a request, issue 7's traces).
_fresh = random.Random()


def random_hex() -> str:
    """24 hex digits (96 random bits) for a new id."""
    return f"{_fresh.getrandbits(96):024x}"


def new_tool_id() -> str:
    """A fresh Anthropic-style id for a tool call the backend sent without one."""
    return "toolu_" + random_hex()


def new_message_id() -> str:
    return "msg_" + random_hex()


def new_completion_id() -> str:
    return "chatcmpl-" + random_hex()


def shorten_tool_name(name: str) -> str:
    """A name OpenAI accepts (``^[A-Za-z0-9_-]{1,64}$``), case kept.

    Longer or otherwise invalid names become a 55-character prefix, ``_`` and
    8 hex of sha256 (LiteLLM's scheme), which `ToolNames` maps back.
    """
    if _NAME_OK.match(name):
        return name
    cleaned = _ID_BAD_CHAR.sub("_", name)
    return cleaned[:55] + "_" + _hash8(name)


class ToolNames:
    """The reversible name map of one request's tools."""

    __slots__ = ("_to_backend", "_to_client")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._to_backend: dict[str, str] = {}
        self._to_client: dict[str, str] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> str:
        short = shorten_tool_name(name)
        self._to_backend[name] = short
        self._to_client[short] = name
        return short

    def to_backend(self, name: str) -> str:
        """The name sent upstream for the client's ``name``."""
        found = self._to_backend.get(name)
        return found if found is not None else shorten_tool_name(name)

    def to_client(self, name: str) -> str:
        """The client's original name for an upstream ``name``; unknown names pass as they are."""
        return self._to_client.get(name, name)

    @property
    def shortened(self) -> bool:
        """True when at least one name had to change for the backend."""
        return any(k != v for k, v in self._to_backend.items())
