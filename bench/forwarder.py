"""The baseline: a bare Tornado handler forwarding to an upstream through one shared aiohttp session.

No auth, no parsing, no limits, no accounting, no translation. ``POST
/openai/...`` goes to the OpenAI upstream's chat URL and ``POST /anthropic/...``
to the Anthropic upstream's messages URL, so it talks to the same upstream as
the Bridgekeeper route it is compared with. Streams are relayed chunk by chunk.

``--loop asyncio`` (the default) is issue 7's baseline as written: the naive
30-line forwarder on the event loop Tornado runs by default. ``--loop uvloop``
is the same handler on uvloop, the least any gateway on this stack can cost;
the suite reports Bridgekeeper against both.

    python -m bench.forwarder --openai URL --anthropic URL [--port 0] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import tornado.httpserver
import tornado.netutil
import tornado.web

from bench.loops import raise_fd_limit, run_fast


class ForwardHandler(tornado.web.RequestHandler):
    def initialize(self, session: aiohttp.ClientSession, urls: dict[str, str]) -> None:
        self.session = session
        self.urls = urls

    async def post(self, dialect: str) -> None:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        url = self.urls[dialect]
        async with self.session.post(url, data=self.request.body, headers=headers) as resp:
            self.set_status(resp.status)
            content_type = resp.headers.get("Content-Type", "application/json")
            self.set_header("Content-Type", content_type)
            if not content_type.startswith("text/event-stream"):
                self.finish(await resp.read())
                return
            async for chunk in resp.content.iter_any():
                self.write(chunk)
                await self.flush()


async def serve(host: str, port: int, urls: dict[str, str]) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app = tornado.web.Application(
        [(r"/(openai|anthropic)/.*", ForwardHandler, {"session": session, "urls": urls})],
        log_function=lambda handler: None,
    )
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(port, address=host)
    server.add_sockets(sockets)
    print(f"READY {sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--openai", required=True, help="OpenAI chat completions URL")
    parser.add_argument("--anthropic", required=True, help="Anthropic messages URL")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    main = serve(args.host, args.port, {"openai": args.openai, "anthropic": args.anthropic})
    if args.loop == "uvloop":
        run_fast(main)
    else:
        raise_fd_limit()
        try:
            asyncio.run(main)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
