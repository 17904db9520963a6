"""What every upstream client returns, and the one place aiohttp's errors become ours.

`UpstreamResponse` is an answer whose status and headers are known and whose
body has not been read yet, so the gateway can stream it or read it whole. A redirect
is never followed: it is an `UpstreamError` (`redirect_error`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urljoin

import aiohttp
import orjson

from app.errors import UpstreamConnectError, UpstreamError, UpstreamTimeoutError
from app.upstreams.bulk_read import bulk_reader


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]
    # Seconds a stream may stay silent before it is given up on (the gateway's
    # `SilenceWatch` keeps that time); None for no limit.
    timeout: float | None

    async def read(self) -> bytes: ...

    # The next piece of the body as it arrives; b"" at the end. Safe to cancel (the
    # gateway's heartbeat timer does): nothing is lost. May raise the HTTP client's own
    # errors: `read_error` says what they mean.
    @property
    def read_chunk(self) -> Callable[[], Awaitable[bytes]]: ...

    def read_error(self, exc: BaseException) -> BaseException | None:
        """The `UpstreamError` for what ``read_chunk`` raised; None to let it through."""
        ...

    def close(self) -> None: ...

    def release(self) -> None:
        """The answer was read to its end: keep the connection for the next request."""
        ...


# An answer complete by its own markers ([DONE], message_stop) may still have the end of
# its body (the last chunk of a chunked transfer) in flight: waited for this long, this
# much, before the connection is given up instead of reused.
DRAIN_SECONDS = 5.0
DRAIN_BYTES = 65536
_draining: set[asyncio.Task[None]] = set()
log = logging.getLogger(__name__)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds) as a float; HTTP dates are ignored."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                value = float(raw) * scale
            except ValueError:
                continue
            if value >= 0:
                return value
    return None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def html_error_summary(status: int, body: bytes) -> str | None:
    """One line for an HTML error page (a proxy or load balancer in front of the backend),
    so no client has to show markup; None when ``body`` is not HTML."""
    head = body[:500].lstrip().lower()
    if not (head.startswith(b"<") and (b"<html" in head or b"<!doctype html" in head)):
        return None
    title = _TITLE.search(body)
    summary = " ".join(title.group(1).decode("utf-8", "replace").split()) if title else ""
    return f"upstream returned an HTML error page (HTTP {status})" + (
        f": {summary}" if summary else ""
    )


# A user name and password in a URL (``http://user:pass@host``, or without the scheme as
# aiohttp is handed it): to the last "@" before the path, as URL parsers read it.
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#\s]*@")
_TEXT_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
_SHOWN_TARGET = 300  # characters of a redirect's target a message shows


def shown_url(url: str) -> str:
    """``url`` without its user name and password, for a message or a log line (every
    client, usage row and dashboard page that shows it would show the password)."""
    return _URL_USERINFO.sub(r"\1", url, count=1)


def _shown_error(exc: BaseException, url: str) -> str:
    """What aiohttp's ``exc`` says, which may quote ``url`` (with or without its scheme),
    with every URL's user name and password left out."""
    return _TEXT_USERINFO.sub(r"\1", str(exc).replace(url, shown_url(url)))


def redirect_error(status: int, url: str, location: str | None) -> UpstreamError:
    """The failure a 3xx is: following it re-sent the request, with the upstream key in
    ``x-api-key`` (aiohttp strips only ``Authorization``), to whatever the answer named.
    The target is shown without its user name, password, query and fragment."""
    target = "a redirect"
    if location:
        try:
            where = urljoin(url, location.strip())
        except ValueError:  # a malformed address (an unclosed IPv6 bracket)
            where = location.strip()
        where = re.split(r"[?#]", shown_url(where), maxsplit=1)[0]
        if len(where) > _SHOWN_TARGET:
            where = where[:_SHOWN_TARGET] + "…"
        target = f"a redirect to {where}"
    return UpstreamError(
        f"upstream answered HTTP {status} ({target}, not followed): "
        "set the upstream's base_url to where it points"
    )


def _userinfo_refused(url: str) -> str:
    return (
        f"upstream URL {shown_url(url)} carries a user name or password, which cannot go "
        "with the upstream's key: put the secret in the upstream's keys instead"
    )


def _is_redirect(status: int) -> bool:
    return 300 <= status < 400


class HttpResponse:
    """An aiohttp response behind the UpstreamResponse interface, errors mapped."""

    __slots__ = ("_resp", "status", "headers", "timeout", "read_chunk")

    def __init__(self, resp: aiohttp.ClientResponse, timeout: float, stream: bool = False) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.timeout: float | None = timeout
        # The body's own reader, taking what is buffered in one piece (issue 7):
        # `read_error` maps what it raises.
        self.read_chunk: Callable[[], Awaitable[bytes]] = bulk_reader(resp.content)
        if stream:
            # From here on the gateway's one silence timer per stream keeps the timeout:
            # aiohttp's read timeout would re-arm a timer for every chunk.
            conn = resp.connection
            protocol = conn.protocol if conn is not None else None
            if protocol is not None:
                protocol.read_timeout = None
                protocol.start_timeout()  # drops the timer armed for the headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeoutError(
                f"upstream did not finish its answer within {self.timeout:g} s"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            # aiohttp's wording ("<ContentLengthError: 400, message='Not enough data…'>")
            # goes to the log only: its 400 is not the upstream's.
            log.warning("upstream answer cut mid-body: %s", exc)
            raise UpstreamError(
                "upstream answer ended before completion: connection closed"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream connection failed while reading: {exc}") from None
        finally:
            self._resp.release()

    def read_error(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            return UpstreamTimeoutError(f"upstream sent nothing for {self.timeout:g} s mid-stream")
        if isinstance(exc, aiohttp.ClientPayloadError):
            # The client sees this (Claude Code prints it): aiohttp's own wording ("<Transfer
            # EncodingError: 400, message='Not enough data…'>") goes to the log only.
            log.warning("upstream stream cut mid-answer: %s", exc)
            return UpstreamError("upstream stream ended before completion: connection closed")
        if isinstance(exc, aiohttp.ClientError):
            return UpstreamError(f"upstream stream broke: {exc}")
        return None

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        """Back to the pool at once when the body's end is in; otherwise once it arrives
        (in the background, so the client's answer is not held for it). Closing instead
        cost the next request a new connection: half of all streams (issue 7's profiles)."""
        if self._resp.content.at_eof():
            self._resp.release()
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        _draining.add(task)
        task.add_done_callback(_draining.discard)

    async def _drain(self) -> None:
        resp = self._resp
        left = DRAIN_BYTES
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while left > 0 and (data := await resp.content.readany()):
                    left -= len(data)
        except (TimeoutError, aiohttp.ClientError, OSError):
            left = 0
        finally:
            if left > 0:
                resp.release()
            else:
                resp.close()


_NEVER_ROUNDED = 1e9  # seconds: no timeout of ours is this long


@lru_cache(maxsize=64)
def _timeouts(timeout: float, stream: bool) -> aiohttp.ClientTimeout:
    """A whole answer within ``timeout``; a stream's headers within ``timeout`` of the
    last byte sent, and then (`HttpResponse`) its body may run on as long as it never
    falls silent for that long. (A whole answer's read timer too was one more timer
    handle rescheduled on every read.) Deadlines are kept to the moment: aiohttp rounds
    those of 5 s or more up to a whole second of the loop's clock, unless told not to."""
    return aiohttp.ClientTimeout(
        total=None if stream else timeout,
        connect=min(timeout, 10.0),
        sock_read=timeout if stream else None,
        ceil_threshold=_NEVER_ROUNDED,
    )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    stream: bool,
) -> HttpResponse:
    """POST and return once status and headers arrived; connection errors and redirects
    (`redirect_error`) mapped."""
    try:
        resp = await session.post(
            url,
            data=body,
            headers=headers,
            timeout=_timeouts(timeout, stream),
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeoutError(f"upstream did not answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectError(
            f"cannot connect to upstream {shown_url(url)}: {_shown_error(exc.os_error, url)}"
        ) from None
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        raise UpstreamConnectError(f"invalid upstream URL {shown_url(url)}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(f"upstream request failed: {_shown_error(exc, url)}") from None
    except ValueError:
        if shown_url(url) == url:
            raise
        # aiohttp refuses a password in the URL next to an Authorization header: an
        # upstream stored before the config file and the dashboard refused one.
        raise UpstreamConnectError(_userinfo_refused(url)) from None
    if _is_redirect(resp.status):
        resp.close()
        raise redirect_error(resp.status, url, resp.headers.get("Location"))
    return HttpResponse(resp, timeout, stream)


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], *, timeout: float
) -> Any:
    """GET a JSON document (model lists); errors and redirects (`redirect_error`) mapped."""
    client_timeout = aiohttp.ClientTimeout(
        total=timeout, connect=min(timeout, 10.0), ceil_threshold=_NEVER_ROUNDED
    )
    shown = shown_url(url)
    try:
        raw = await session.get(url, headers=headers, timeout=client_timeout, allow_redirects=False)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeoutError(f"upstream did not answer within {timeout:g} s") from None
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        raise UpstreamConnectError(f"invalid upstream URL {shown}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(
            f"cannot reach upstream {shown}: {_shown_error(exc, url)}"
        ) from None
    except ValueError:
        if shown == url:
            raise
        raise UpstreamConnectError(_userinfo_refused(url)) from None
    if _is_redirect(raw.status):
        raw.close()
        raise redirect_error(raw.status, url, raw.headers.get("Location"))
    resp = HttpResponse(raw, timeout)
    body = await resp.read()
    if resp.status >= 400:
        raise UpstreamError(f"upstream answered {resp.status} for {shown}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"upstream sent invalid JSON for {shown}") from None
