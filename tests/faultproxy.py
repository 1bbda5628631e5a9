"""A fault-injecting HTTP reverse proxy for tests, run in a background thread.

Requests are forwarded to an upstream endpoint (the moto S3 server) unless an injected
rule matches "METHOD /path?query"; a matching rule answers 503 SlowDown or resets the
connection, `count` times. Every request is recorded, so a test can check that the
fault it names really fired.

>>> with FaultProxy("http://127.0.0.1:5000") as proxy:  # doctest: +SKIP
...     proxy.inject("503", "PUT /bucket/key", count=2)
...     ...  # point the client at proxy.url
...     assert len(proxy.fired("PUT /bucket/key")) == 2
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

Mode = Literal["503", "reset"]

#: RFC 9110 hop-by-hop headers, plus those the forwarding client recomputes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    }
)
_RECOMPUTED = frozenset({"content-length", "expect"})
_SLOW_DOWN = (
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<Error><Code>SlowDown</Code><Message>injected by FaultProxy</Message></Error>"
)
_TIMEOUT = 30.0


@dataclass
class Rule:
    """An injected fault: `mode` for the next `remaining` requests containing `match`."""

    mode: Mode
    match: str
    remaining: int


@dataclass(frozen=True)
class Seen:
    """One request the proxy received: its target, the fault fired (None when it was
    forwarded) and the status returned (None for a reset or a failed forward)."""

    target: str
    fault: Mode | None
    status: int | None


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `upstream`, with injectable faults."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL; clients use it as their endpoint."""
        if self._url is None:
            raise RuntimeError("FaultProxy is not started")
        return self._url

    def start(self) -> str:
        """Start serving on a free port in a background thread; return the URL."""
        if self._url is not None:
            return self._url
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self._url = f"http://{self.host}:{port}"
        return self._url

    def stop(self) -> None:
        """Stop serving and end the background thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_TIMEOUT)
            loop.close()
            self._loop = self._thread = None
            self._url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def inject(self, mode: Mode, match: str, count: int = 1) -> Rule:
        """Fail the next `count` requests whose "METHOD /path?query" contains `match`."""
        if mode not in ("503", "reset"):
            raise ValueError(f"unknown fault mode {mode!r}; use '503' or 'reset'")
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        rule = Rule(mode, match, count)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every injected rule (the request record is kept)."""
        with self._lock:
            self._rules.clear()

    @property
    def seen(self) -> list[Seen]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._seen)

    def requests(self, match: str = "") -> list[Seen]:
        """The requests received whose target contains `match`."""
        return [s for s in self.seen if match in s.target]

    def fired(self, match: str = "") -> list[Seen]:
        """The requests answered with a fault whose target contains `match`."""
        return [s for s in self.requests(match) if s.fault is not None]

    def _take_rule(self, target: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.match in target:
                    rule.remaining -= 1
                    return rule
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    async def _serve(self) -> int:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = f"{request.method} {request.raw_path}"
        rule = self._take_rule(target)
        if rule is not None and rule.mode == "reset":
            self._record(Seen(target, "reset", None))
            _reset(request)
            raise asyncio.CancelledError  # the connection is gone: nothing to answer
        body = await request.read()
        if rule is not None:
            self._record(Seen(target, "503", 503))
            return web.Response(status=503, text=_SLOW_DOWN, content_type="application/xml")
        try:
            response = await self._forward(request, body)
        except BaseException:
            self._record(Seen(target, None, None))
            raise
        self._record(Seen(target, None, response.status))
        return response

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items()
            if k.lower() not in _HOP_BY_HOP | _RECOMPUTED
        )  # Host is kept: signatures and emulator redirects depend on it
        async with self._session.request(
            request.method,
            URL(self.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=io.BytesIO(body) if body else None,  # raw bytes would block the loop
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
        ) as upstream:
            payload = await upstream.read()
            out = CIMultiDict(
                (k, v) for k, v in upstream.headers.items()
                if k.lower() not in _HOP_BY_HOP | {"content-length"}
            )
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                # s3fs info() reads the size of a HEAD answer from Content-Length
                out["Content-Length"] = upstream.headers["Content-Length"]
            return web.Response(status=upstream.status, headers=out, body=payload)


def _reset(request: web.Request) -> None:
    """Drop the client's connection with a TCP RST (SO_LINGER 0), without answering."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
