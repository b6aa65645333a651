"""CountingProxy: pipes_bus's FaultProxy that also counts every request, by kind, over time.

Request accounting as the store sees it: everything that reaches the proxy is counted
(retries included, whichever process sent them), classified from the S3 REST call:

    put     PUT of an object (a chunk, a context object)
    get     GET of an object
    list    GET of a bucket with list-type/prefix/delimiter (ListObjectsV2)
    head    HEAD
    delete  DELETE
    other   anything else (POST, bucket calls)

A sampler thread records the cumulative counts every ``interval`` seconds, so a benchmark
can compute request rates over any window afterwards (e.g. only once an idle session has
backed off). Faults (``pipes_bus.testing.ProxyFaults``) are injected as by FaultProxy; the
``faults_injected`` count says what was injected. ``rtt`` adds a fixed delay to every
request, to stand in for a remote store's round trip (real S3: tens of ms).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from pipes_bus.testing.fault_proxy import FaultProxy, ProxyFaults

KINDS = ("put", "get", "list", "head", "delete", "other")
# S3 Standard prices per request, from the design notes: $0.005 per 1,000 PUT, COPY,
# POST or LIST; $0.0004 per 1,000 GET and other reads.
PRICE_PER_REQUEST = {
    "put": 0.005 / 1000,
    "list": 0.005 / 1000,
    "other": 0.005 / 1000,
    "get": 0.0004 / 1000,
    "head": 0.0004 / 1000,
    "delete": 0.0,
}


def classify(method: str, path: str) -> str:
    """The kind of an S3 REST request (path-style addressing, as against a local server)."""
    if method == "PUT":
        parts = urlsplit(path)
        return "put" if parts.path.strip("/").count("/") >= 1 else "other"
    if method == "GET":
        parts = urlsplit(path)
        bucket_only = parts.path.strip("/").count("/") == 0
        if bucket_only or "list-type=" in parts.query:
            return "list"
        return "get"
    if method == "HEAD":
        return "head"
    if method == "DELETE":
        return "delete"
    return "other"


def cost(requests: Mapping[str, float]) -> float:
    """Dollars for these requests at S3 Standard prices."""
    return sum(PRICE_PER_REQUEST.get(kind, 0.0) * n for kind, n in requests.items())


class CountingProxy(FaultProxy):
    """A FaultProxy (faults off unless given) that counts requests by kind, sampled over time."""

    def __init__(
        self,
        upstream: str,
        faults: ProxyFaults | None = None,
        interval: float = 1.0,
        rtt: float = 0.0,
    ) -> None:
        super().__init__(upstream, faults)
        self.rtt = rtt  # seconds added to every request, like a remote store's latency
        self.requests: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.bytes_in = 0  # request bodies (uploads)
        self.interval = interval
        # (seconds since start, cumulative counts by kind)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._sampler_stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="proxy-sampler", daemon=True)
        self.t0 = time.monotonic()

    def _record(self, method: str, path: str, size: int) -> None:
        kind = classify(method, path)
        with self._lock:
            self.requests[kind] += 1
            self.bytes_in += size

    def snapshot(self) -> dict[str, int]:
        """The cumulative counts now."""
        with self._lock:
            return dict(self.requests)

    def _sample(self) -> None:
        while not self._sampler_stop.is_set():
            self.samples.append((time.monotonic() - self.t0, self.snapshot()))
            self._sampler_stop.wait(self.interval)

    def start(self) -> CountingProxy:
        super().start()
        self.t0 = time.monotonic()
        self._sampler.start()
        return self

    def stop(self) -> None:
        self._sampler_stop.set()
        self._sampler.join()
        self.samples.append((time.monotonic() - self.t0, self.snapshot()))
        super().stop()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def now(self) -> float:
        """Seconds since the proxy started, on the clock of :attr:`samples`."""
        return time.monotonic() - self.t0

    def window(self, start: float, end: float) -> tuple[dict[str, int], float]:
        """Requests by kind between the samples nearest ``start`` and ``end``, and the
        seconds between those samples."""
        t1, before = _at(self.samples, start)
        t2, after = _at(self.samples, end)
        return {k: after.get(k, 0) - before.get(k, 0) for k in KINDS}, t2 - t1

    @property
    def faults_injected(self) -> dict[str, int]:
        """What the proxy injected: slow_down, drop, outage (and forwarded)."""
        with self._lock:
            return dict(self.counts)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        proxy = self

        class Counting(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                # FaultProxy writes a response's headers and body in two unbuffered writes;
                # without TCP_NODELAY, Nagle's algorithm holds the body until the client's
                # delayed ACK of the headers: +40 ms on every GET.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                proxy._record(self.command, self.path, int(self.headers.get("Content-Length") or 0))
                if proxy.rtt:
                    time.sleep(proxy.rtt)
                super()._handle()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Counting


def _at(samples: list[tuple[float, dict[str, int]]], t: float) -> tuple[float, dict[str, int]]:
    """The last sample taken at or before ``t`` (the first one if none)."""
    chosen = samples[0] if samples else (0.0, {})
    for sample in samples:
        if sample[0] > t:
            break
        chosen = sample
    return chosen
