"""FaultProxy: an HTTP reverse proxy in front of a real store, that records what clients send
and makes the store misbehave, for end-to-end tests.

Put it in front of a local store server (moto's S3 server, Azurite, fake-gcs-server) and
point the client at the proxy. It forwards requests unchanged and records each one
(:attr:`FaultProxy.requests`: method, path, headers, status and bytes each way). It can
answer some requests itself (``inject``: say, a 409 ConditionalRequestConflict or a 503),
and inject faults at random (:class:`ProxyFaults`): ``503 SlowDown``, dropped connections
before or after forwarding (so a write may have happened although the client saw an
error), and full outages of a few seconds. It listens on loopback only and stops when
asked.
"""

from __future__ import annotations

import collections
import http.client
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "ProxyFaults", "Recorded", "Reply"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The proxy's own http.server sends these; the store's copies would be duplicates.
_OWN = frozenset({"server", "date"})
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)

#: An answer the proxy sends instead of forwarding: (status, headers, body).
Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    """One request the proxy received, and what its client got back.

    ``headers`` have lower-case names. ``bytes_sent`` is the request body's size,
    ``bytes_received`` the response body's; ``status`` is 0 for a dropped connection.
    ``status`` and ``bytes_received`` are filled in before the answer goes out.
    """

    method: str
    path: str
    headers: dict[str, str]
    bytes_sent: int = 0
    status: int = 0
    bytes_received: int = 0


@dataclass
class ProxyFaults:
    """What the proxy injects at random.

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a dropped connection it was told about, a timeout) is
        # not news; anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class FaultProxy:
    """A loopback reverse proxy to ``upstream`` that records requests and injects faults.

    ``faults`` are injected at random while :attr:`enabled`; :attr:`counts` says how many
    of each (and how many requests were forwarded). ``inject(request)`` is asked first
    about every request: it may return a :data:`Reply` to send instead of forwarding, or
    None to go on. :attr:`requests` holds the last ``keep`` requests, oldest first (a soak
    through the proxy stays bounded).
    """

    def __init__(
        self,
        upstream: str,
        faults: ProxyFaults | None = None,
        *,
        inject: Callable[[Recorded], Reply | None] | None = None,
        keep: int = 10_000,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults = faults or ProxyFaults()
        self.inject = inject
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.counts: dict[str, int] = {"forwarded": 0, "slow_down": 0, "drop": 0, "outage": 0}
        self.enabled = True
        # Handlers append to `_recorded`; `requests` is the same list (a subclass may use
        # the name for something else).
        self._recorded: collections.deque[Recorded] = collections.deque(maxlen=keep)
        self.requests: collections.deque[Recorded] = self._recorded
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

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
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def methods(self) -> list[str]:
        """The HTTP methods of the requests recorded so far, in order."""
        with self._lock:
            return [request.method for request in self._recorded]

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._recorded.clear()

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

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _reply(
                self, seen: Recorded, status: int, headers: list[tuple[str, str]], body: bytes
            ) -> None:
                head = self.command == "HEAD"
                seen.status = status
                seen.bytes_received = 0 if head else len(body)
                self.send_response(status)
                for name, value in headers:
                    lower = name.lower()
                    if lower in _HOP_BY_HOP or lower in _OWN:
                        continue
                    if lower == "content-length" and not head:
                        continue  # set below, from the body actually sent
                    self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                seen = Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    bytes_sent=len(body),
                )
                with proxy._lock:
                    proxy._recorded.append(seen)
                injected = proxy.inject(seen) if proxy.inject is not None else None
                if injected is not None:
                    status, headers, payload = injected
                    self._reply(seen, status, list(headers.items()), payload)
                    return
                decision = proxy._decide()
                if decision == "slow_down":
                    slow = [("Content-Type", "application/xml")]
                    self._reply(seen, 503, slow, _SLOW_DOWN)
                    return
                if decision == "drop_before":
                    self._drop()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                proxy._count("forwarded")
                if decision == "drop_after":
                    self._drop()
                    return
                self._reply(seen, response.status, response.getheaders(), payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        return Handler
