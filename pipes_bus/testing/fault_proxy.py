"""FaultProxy: an HTTP reverse proxy that makes a real store misbehave, for end-to-end tests.

Put it in front of a local store server (moto's S3 server, Azurite, fake-gcs-server) and
point the client at the proxy. It forwards requests unchanged, except that it can answer
``503 SlowDown``, drop connections before or after forwarding (so a write may have
happened although the client saw an error), and go fully dark for outages of a few
seconds. It listens on loopback only and stops when asked.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "ProxyFaults"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class ProxyFaults:
    """What the proxy injects.

    ``slow_down``: share of requests answered 503 SlowDown without reaching the store.
    ``drop``: share of requests whose connection is closed without an answer (half of
    them after the store has handled the request).
    ``outage_every`` / ``outage_for``: every ``outage_every`` seconds, all requests fail
    (503 or dropped) for ``outage_for`` seconds. 0 disables outages.
    """

    slow_down: float = 0.0
    drop: float = 0.0
    outage_every: float = 0.0
    outage_for: float = 0.0
    seed: int = 0


class FaultProxy:
    """A loopback reverse proxy to ``upstream`` that injects :class:`ProxyFaults`."""

    def __init__(self, upstream: str, faults: ProxyFaults | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults = faults or ProxyFaults()
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.counts: dict[str, int] = {"forwarded": 0, "slow_down": 0, "drop": 0, "outage": 0}
        self.enabled = True
        handler = self._handler_class()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's address, e.g. http://127.0.0.1:41234."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        """Start serving in a background thread."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _decide(self) -> str:
        """One of: forward, slow_down, drop_before, drop_after."""
        f = self.faults
        if not self.enabled:
            return "forward"
        with self._lock:
            roll = self._random.random()
            coin = self._random.random()
        if f.outage_every > 0 and f.outage_for > 0:
            phase = (time.monotonic() - self._started) % f.outage_every
            if phase >= f.outage_every - f.outage_for:
                self._count("outage")
                return "slow_down" if coin < 0.5 else "drop_before"
        if roll < f.slow_down:
            self._count("slow_down")
            return "slow_down"
        if roll < f.slow_down + f.drop:
            self._count("drop")
            return "drop_before" if coin < 0.5 else "drop_after"
        return "forward"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's
                # algorithm waits on the client's delayed ACK (~40 ms per response).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                decision = proxy._decide()
                if decision == "slow_down":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_SLOW_DOWN)
                    return
                if decision == "drop_before":
                    self._drop()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                proxy._count("forwarded")
                if decision == "drop_after":
                    self._drop()
                    return
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                size = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
