"""CountingProxy: request accounting as an S3 store sees it, with optional faults and delay.

A loopback HTTP forwarder in front of moto that counts every request that reaches it
(retries included, whichever process sent them) by kind, and the bytes both ways:

    put     PUT of an object (a chunk, a context object)
    get     GET of an object
    list    GET of a bucket (ListObjectsV2)
    head    HEAD
    delete  DELETE (of anything but a heartbeat)
    other   anything else (POST, bucket calls)
    cancel  a worker's check of ``{session}/cancel`` (GET or HEAD)
    beat    a worker's heartbeat: PUT or DELETE under ``{session}/beats/``

``cancel`` and ``beat`` are what the workers' control threads cost; everything else in an
idle session is the orchestrator's (it lists ``beats/``, which counts as ``list``).

A sampler thread records the cumulative counts every second, so rates can be taken over
any window afterwards (e.g. once an idle session has backed off). ``rtt`` delays every
request, like a remote store's round trip. With ``faults``, requests go on through
``pipes_bus.testing.fault_proxy.FaultProxy`` (503 SlowDown, dropped connections,
outages): a connection it drops is dropped here too, so the client sees the fault.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pipes_bus.testing.fault_proxy import FaultProxy, ProxyFaults

KINDS = ("put", "get", "list", "head", "delete", "other", "cancel", "beat")
WORKER = ("cancel", "beat")  # the kinds only the workers' control threads send
# S3 Standard: $0.005 per 1,000 PUT, COPY, POST or LIST; $0.0004 per 1,000 GET and reads.
PRICE = {"put": 5e-6, "list": 5e-6, "other": 5e-6, "get": 4e-7, "head": 4e-7, "delete": 0.0}
PRICE |= {"cancel": 4e-7}  # a "beat" is priced as it happens: its PUT, not its DELETE
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"}
_HOP |= {"trailers", "transfer-encoding", "upgrade", "content-length"}

Sample = tuple[float, dict[str, int], int]  # seconds since start, requests by kind, bytes


def classify(method: str, path: str) -> str:
    """The kind of an S3 REST request (path-style addressing, as against a local server)."""
    parts = urlsplit(path)
    depth = parts.path.strip("/").count("/")
    if method in ("GET", "HEAD") and parts.path.endswith("/cancel"):
        return "cancel"
    if method in ("PUT", "DELETE") and "/beats/" in parts.path:
        return "beat"
    if method == "PUT":
        return "put" if depth >= 1 else "other"
    if method == "GET":
        return "list" if depth == 0 or "list-type=" in parts.query else "get"
    return {"HEAD": "head", "DELETE": "delete"}.get(method, "other")


def cost(requests: Mapping[str, float]) -> float:
    """Dollars for these requests at S3 Standard prices (half of the beats are PUTs)."""
    beats = requests.get("beat", 0.0) / 2 * PRICE["put"]
    return beats + sum(PRICE.get(kind, 0.0) * n for kind, n in requests.items())


def window(samples: list[Sample], start: float, end: float) -> tuple[dict[str, int], int, float]:
    """Requests by kind and bytes between the samples nearest ``start`` and ``end``, and the
    seconds between those samples."""

    def at(t: float) -> Sample:
        chosen = samples[0] if samples else (0.0, {}, 0)
        for sample in samples:
            if sample[0] > t:
                break
            chosen = sample
        return chosen

    (t1, before, b1), (t2, after, b2) = at(start), at(end)
    kinds = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in kinds.items() if v}, b2 - b1, t2 - t1


def rates(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Requests over [start, end]: per second and by kind, per minute, bytes, $ per hour."""
    counts, nbytes, seconds = window(samples, start, end)
    seconds = max(seconds, 1e-9)
    per_s = {k: v / seconds for k, v in counts.items()}
    return {
        "window_s": round(seconds, 1),
        "requests_window": counts,
        "requests_per_s": sum(per_s.values()),
        "requests_per_s_by_kind": {k: round(v, 3) for k, v in per_s.items()},
        "requests_per_minute": sum(per_s.values()) * 60,
        "bytes_per_minute": nbytes * 60 / seconds,
        "usd_per_hour": cost({k: v * 3600 for k, v in per_s.items()}),
        # The same split between the workers' control threads and the orchestrator.
        "worker_requests_per_s": sum(v for k, v in per_s.items() if k in WORKER),
        "worker_usd_per_hour": cost({k: v * 3600 for k, v in per_s.items() if k in WORKER}),
        "orchestrator_requests_per_s": sum(v for k, v in per_s.items() if k not in WORKER),
        "orchestrator_usd_per_hour": cost(
            {k: v * 3600 for k, v in per_s.items() if k not in WORKER}
        ),
    }


def trailing(samples: list[Sample], end: float, span: float = 60, step: float = 5) -> list[Any]:
    """[t, the orchestrator's requests/s averaged over the ``span`` s before t] every
    ``step`` s, up to ``end`` (the workers' control requests left out)."""
    out, t = [], step
    while t <= end:
        counts, _, seconds = window(samples, max(0.0, t - span), t)
        sent = sum(v for k, v in counts.items() if k not in WORKER)
        out.append([round(t, 1), round(sent / max(seconds, 1e-9), 3)])
        t += step
    return out


class CountingProxy:
    """A loopback forwarder to ``upstream`` that counts requests; see the module doc."""

    def __init__(self, upstream: str, faults: ProxyFaults | None = None, rtt: float = 0.0):
        self.faults = FaultProxy(upstream, faults) if faults else None
        parts = urlsplit(self.faults.url if self.faults else upstream)
        self.host, self.port, self.rtt = parts.hostname or "127.0.0.1", parts.port or 80, rtt
        self.requests = dict.fromkeys(KINDS, 0)
        self.bytes = 0
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda *_: None  # type: ignore[method-assign]  # resets
        self._stop = threading.Event()
        self.t0 = time.monotonic()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def now(self) -> float:
        """Seconds since the proxy started, on the clock of :attr:`samples`."""
        return time.monotonic() - self.t0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.requests)

    @property
    def injected(self) -> dict[str, int]:
        """What the fault proxy injected: slow_down, drop, outage (and forwarded)."""
        return dict(self.faults.counts) if self.faults else {}

    def __enter__(self) -> CountingProxy:
        if self.faults:
            self.faults.start()
        self.t0 = time.monotonic()
        for target in (self._server.serve_forever, self._sample):
            threading.Thread(target=target, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self.samples.append((self.now(), self.snapshot(), self.bytes))
        if self.faults:
            self.faults.stop()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((self.now(), self.snapshot(), self.bytes))
            self._stop.wait(1.0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # waits on the client's delayed ACK (~40 ms per response).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests[classify(self.command, self.path)] += 1
                    proxy.bytes += length
                if proxy.rtt:
                    time.sleep(proxy.rtt)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException):  # dropped by the fault proxy
                    self.close_connection = True
                    linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # reset, as it did
                    try:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                finally:
                    upstream.close()
                with proxy.lock:
                    proxy.bytes += len(data)
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP:
                        self.send_header(name, value)
                head_size = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", head_size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
