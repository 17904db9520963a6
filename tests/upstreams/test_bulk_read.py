"""`bulk_reader` hands over what aiohttp's ``readany`` would, in one piece, and leaves the
reader as ``readany`` leaves it: the same bytes, the same buffered size, position and
chunk bookkeeping, and reading resumed under the same conditions."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from app.upstreams.bulk_read import SUPPORTED, bulk_reader
from tests.fakes import SSEReply

pytestmark = pytest.mark.gen_test(timeout=30)


class _Transport:
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _Protocol(BaseProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.transport = _Transport()  # type: ignore[assignment]  # "connected", nothing more
        self.resumed = 0

    def pause_reading(self) -> None:
        self._reading_paused = True  # no parser or transport here to pause

    def resume_reading(self, resume_parser: bool = True) -> None:
        self.resumed += 1
        super().resume_reading(resume_parser)


def _state(reader: StreamReader, protocol: _Protocol) -> tuple[Any, ...]:
    splits = reader._http_chunk_splits
    return (
        reader._size,
        reader._cursor,
        reader._buffer_offset,
        list(reader._buffer),
        None if splits is None else list(splits),
        reader.total_bytes,
        protocol._reading_paused,
        protocol.resumed > 0,
    )


def test_the_installed_aiohttp_has_what_the_bulk_read_relies_on() -> None:
    """An aiohttp upgrade that renames the reader's fields fails here, not silently."""
    assert SUPPORTED


@pytest.mark.parametrize("seed", range(30))
async def test_bulk_reads_leave_the_reader_as_readany_does(seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    limit = rng.choice([64, 1024, 2**16])
    sides = []
    for _ in range(2):
        protocol = _Protocol(loop)
        reader = StreamReader(protocol, limit, loop=loop)
        reader.begin_http_chunk_receiving()
        sides.append((protocol, reader))
    (p_any, r_any), (p_bulk, r_bulk) = sides
    read_bulk = bulk_reader(r_bulk)
    sent = got_any = got_bulk = b""
    for _ in range(40):
        step = rng.random()
        if step < 0.6:
            for _ in range(rng.randint(1, 30)):
                chunk = rng.randbytes(rng.randint(1, 200))
                sent += chunk
                for _, reader in sides:
                    reader.feed_data(chunk)
                    reader.end_http_chunk_receiving()
        elif step < 0.7 and r_any._buffer:
            n = rng.randint(1, 50)  # a partial read leaves an offset into the first chunk
            got_any += r_any.read_nowait(n)
            got_bulk += r_bulk.read_nowait(n)
        elif r_any._buffer:
            got_any += await r_any.readany()
            got_bulk += await read_bulk()
        assert got_bulk == got_any
        assert _state(r_bulk, p_bulk) == _state(r_any, p_any)
    for _, reader in sides:
        reader.feed_eof()
    got_any += await r_any.readany()
    got_bulk += await read_bulk()
    assert got_bulk == got_any == sent
    assert await read_bulk() == b"" and r_bulk.at_eof()


async def test_an_error_is_raised_as_readany_raises_it() -> None:
    loop = asyncio.get_running_loop()
    reader = StreamReader(_Protocol(loop), 2**16, loop=loop)
    reader.begin_http_chunk_receiving()
    for chunk in (b"a", b"b"):
        reader.feed_data(chunk)
        reader.end_http_chunk_receiving()
    reader.set_exception(aiohttp.ClientPayloadError("cut"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await bulk_reader(reader)()


@pytest.mark.parametrize("delay", [0.0, 0.001])
async def test_a_real_chunked_body_read_in_bulk(fake_openai, delay: float) -> None:  # type: ignore[no-untyped-def]
    """Thousands of chunks, more than aiohttp buffers before pausing the socket: all of
    them arrive, in order, and the connection is reused after."""
    chunks = [b"data: %d\n\n" % i for i in range(3000 if not delay else 200)]
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            fake_openai.push(SSEReply(chunks, delay=delay))
            async with session.post(fake_openai.url + "/chat/completions", json={}) as resp:
                read = bulk_reader(resp.content)
                body, reads = b"", 0
                while data := await read():
                    body += data
                    reads += 1
                    await asyncio.sleep(0)  # let chunks pile up between reads
            assert body == b"".join(chunks)
            if not delay:
                assert reads < len(chunks)
    assert len({r.peer for r in fake_openai.received}) == 1


@pytest.mark.parametrize("chunks", [1, 2, 30])
async def test_a_read_that_waited_takes_all_that_came_meanwhile(chunks: int) -> None:
    """The read waits on an empty buffer; several chunks come before it resumes (as when
    an upstream sends a burst): it takes them all, leaving the reader as readany does."""
    loop = asyncio.get_running_loop()
    sides = []
    for _ in range(2):
        protocol = _Protocol(loop)
        reader = StreamReader(protocol, 2**16, loop=loop)
        reader.begin_http_chunk_receiving()
        sides.append((protocol, reader))
    (p_any, r_any), (p_bulk, r_bulk) = sides
    waiting_any = asyncio.ensure_future(r_any.readany())
    waiting_bulk = asyncio.ensure_future(bulk_reader(r_bulk)())
    await asyncio.sleep(0)  # both are waiting now
    for i in range(chunks):
        for _, reader in sides:
            reader.feed_data(b"chunk %d;" % i)
            reader.end_http_chunk_receiving()
    assert (
        await waiting_bulk == await waiting_any == b"".join(b"chunk %d;" % i for i in range(chunks))
    )
    assert _state(r_bulk, p_bulk) == _state(r_any, p_any)
    # The end of the body while waiting: b"", as readany gives.
    waiting_bulk = asyncio.ensure_future(bulk_reader(r_bulk)())
    await asyncio.sleep(0)
    r_bulk.feed_eof()
    assert await waiting_bulk == b""
    # A failure while waiting is raised to the reader.
    reader = StreamReader(_Protocol(loop), 2**16, loop=loop)
    waiting_bulk = asyncio.ensure_future(bulk_reader(reader)())
    await asyncio.sleep(0)
    reader.set_exception(aiohttp.ClientPayloadError("cut"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await waiting_bulk
