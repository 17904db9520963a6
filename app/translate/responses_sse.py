"""A Chat Completions SSE stream, as a chat client of the gateway would get it, read back
chunk by chunk and written out as Responses API events (`responses_stream`).

The gateway serves a Responses client by running its request as a chat one; this turns
each piece of that chat stream into the Responses events it makes, as it comes: nothing
is held back but an event cut between two pieces.
"""

from __future__ import annotations

import orjson

from app.dialects.sse import SSEParser
from app.translate.chat_deltas import split_pair
from app.translate.responses_context import ResponsesContext
from app.translate.responses_stream import ResponsesStream


class ResponsesSSE:
    """Feed the chat stream's bytes; get back the Responses stream's bytes for them."""

    __slots__ = ("_parser", "_events", "_started", "_high")

    def __init__(self, ctx: ResponsesContext) -> None:
        self._parser = SSEParser()
        self._events = ResponsesStream(ctx)
        self._started = False
        self._high: dict[str, str] = {}  # a text field's trailing high surrogate, held

    @property
    def done(self) -> bool:
        """A terminal event (completed, incomplete or failed) is out: nothing follows it."""
        return self._events.done

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out += self._events.start()
        if chunk.startswith(b":") and self._parser.idle and chunk.endswith(b"\n\n"):
            # The gateway's keep-alive comment: it keeps the client's idle timer from firing
            # (Codex gives up on a silent stream), so it goes through as it is.
            if chunk.count(b"\n\n") == 1:
                out.append(chunk)
                return b"".join(out)
        for event in self._parser.feed(chunk):
            out += self._event(event.data)
        return b"".join(out)

    def finish(self) -> bytes:
        """The chat stream ended: whatever it left unsaid, closed as the Responses API does."""
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out += self._events.start()
        for event in self._parser.finish():
            out += self._event(event.data)
        out += self._events.finish()
        return b"".join(out)

    def _event(self, data: str) -> list[bytes]:
        if self._events.done:
            return []
        if data == "[DONE]":
            return self._events.finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            # The gateway relays an OpenAI backend's chunks as they came, an emoji cut
            # between two of them (Node servers) included: orjson refuses its halves.
            chunk = split_pair(data, self._high)
            if chunk is None:
                return []  # not a chat chunk: nothing in it to pass on
        if not isinstance(chunk, dict):
            return []
        return self._events.feed(chunk)
