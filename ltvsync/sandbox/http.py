"""A tiny threaded HTTP app base shared by the four emulators.

Each emulator declares routes (method + path regex → handler) and gets, for free: a server on
127.0.0.1 on a free port (optionally TLS), per-endpoint request counts, and fault injection
(5xx, dropped connections, slow responses) driven by :class:`Knobs`.  Standard library only, so
the real client libraries talk to it over loopback unmodified.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Knobs:
    """Fault and pacing settings; mutable so tests can turn faults on and off while running."""

    fault_rate: float = 0.0  # share of requests that fail (split between 5xx, drops and 429s)
    latency: float = 0.0  # seconds added to every request
    slow_rate: float = 0.0  # share of requests delayed by ``slow_seconds``
    slow_seconds: float = 0.5
    # Multiplies every rate-limit window/penalty (e.g. 0.01 turns a 60 s window into 0.6 s).
    time_scale: float = 1.0
    rate_limits: bool = True
    seed: int = 0
    # Faults never hit these route names (e.g. the test-only admin routes).
    fault_exempt: set[str] = field(default_factory=set)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    base_url: str

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), dict(headers or {}), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        return cls(status, text.encode(), {}, content_type)


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-request (timeouts, injected drops, killed processes) are normal here;
    socketserver would print a traceback for each to stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


Handler = Callable[..., Response]
DROP = object()  # a handler may return this to drop the connection without answering


class Emulator:
    """Base of every emulator: routing, counting, faults, a server thread."""

    name = "emulator"
    # How often the server thread checks for stop(); short so tests tearing emulators down stay fast.
    poll_interval = 0.05

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.counts: Counter[str] = Counter()
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._lock = threading.RLock()
        self._rng = random.Random(self.knobs.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- routing ---------------------------------------------------------------------------------
    def route(self, method: str, pattern: str, name: str, handler: Handler) -> None:
        """Register ``handler(request, **groups) -> Response`` for ``method`` and a path regex."""
        self._routes.append((method, re.compile(f"^{pattern}$"), name, handler))

    def dispatch(self, req: Request) -> Response | object:
        for method, pattern, name, handler in self._routes:
            if method != req.method:
                continue
            match = pattern.match(req.path)
            if match is None:
                continue
            with self._lock:
                self.counts[name] += 1
                self.counts["__total__"] += 1
            fault = self._fault(name)
            if fault is not None:
                return fault
            return handler(req, **match.groupdict())
        return self.not_found(req)

    def not_found(self, req: Request) -> Response:
        return Response.json({"error": "NOT_FOUND", "path": req.path}, 404)

    def _fault(self, name: str) -> Response | object | None:
        k = self.knobs
        if k.latency:
            time.sleep(k.latency)
        if name in k.fault_exempt or name.startswith("admin"):
            return None
        with self._lock:
            roll = self._rng.random()
            slow = self._rng.random() < k.slow_rate
        if slow:
            time.sleep(k.slow_seconds)
        if roll >= k.fault_rate:
            return None
        kind = int(roll / max(k.fault_rate, 1e-12) * 3)
        if kind == 0:
            return self.server_error()
        if kind == 1:
            return DROP
        return self.rate_limited(retry_after=0)

    def server_error(self) -> Response:
        return Response.json({"error": "SERVER_ERROR", "message": "injected fault"}, 503)

    def rate_limited(self, retry_after: float) -> Response:
        return Response.json({"error": "RATE_LIMITED"}, 429, {"Retry-After": f"{retry_after:g}"})

    def count(self, name: str) -> int:
        with self._lock:
            return self.counts[name]

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    # -- server ----------------------------------------------------------------------------------
    def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> str:
        emulator = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK
            # adds ~40 ms to every response.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    emulator.base_url,
                )
                try:
                    resp = emulator.dispatch(req)
                except Exception as exc:  # an emulator bug must be visible, not a hung client
                    resp = Response.json({"error": "EMULATOR_BUG", "message": repr(exc)}, 500)
                if resp is DROP:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert isinstance(resp, Response)
                payload = resp.body
                if isinstance(payload, str):
                    payload = payload.encode()
                elif not isinstance(payload, bytes):
                    payload = json.dumps(payload).encode()
                    resp.content_type = resp.content_type or "application/json"
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in resp.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        server = _QuietServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            # Handshake lazily, in the connection's own thread: done in accept() it would let one
            # silent client (a port probe) stall the whole server.
            server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
            scheme = "https"
        self._server = server
        self.base_url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, args=(self.poll_interval,), name=f"{self.name}-sandbox", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
