"""Real local webhook receivers for tests and demos.

``RecordingReceiver`` records every POSTed JSON body; ``fail_with`` makes it answer an HTTP error (e.g.
500) until cleared; ``delay_s`` makes it slow. ``FaultyReceiver`` is a raw socket server that fails the
ways http.server cannot: refused connections, malformed status lines, bodies cut short, hangs, resets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FAULT_MODES", "FaultyReceiver", "RecordingReceiver"]


class RecordingReceiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_with: int | None = None
        self.delay_s = 0.0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.attempts += 1
                    fail, delay = owner.fail_with, owner.delay_s
                if delay:
                    time.sleep(delay)
                if fail is not None:
                    self.send_response(fail)
                    self.end_headers()
                    return
                with owner._lock:
                    owner.received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> RecordingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self._lock:
            return list(self.received)


# Modes of FaultyReceiver; each is a way real receivers and proxies fail.
OK, REFUSE, ERROR_500, REJECT_400, MALFORMED, CLOSE_MID_BODY, HANG, EMPTY, RESET = (
    "ok", "refuse", "500", "400", "malformed", "close_mid_body", "hang", "empty", "reset")  # fmt: skip
FAULT_MODES = (OK, REFUSE, ERROR_500, REJECT_400, MALFORMED, CLOSE_MID_BODY, HANG, EMPTY, RESET)


class FaultyReceiver:
    """A webhook receiver on a raw socket that fails on demand (set ``mode``, or ``play`` a script):

    ``ok`` records the JSON body and answers 200; ``refuse`` closes the listening socket (connection
    refused, the port is kept and reopened later); ``500``/``400`` answer that status (400 with a body);
    ``malformed`` answers a line that is not an HTTP status line (BadStatusLine); ``close_mid_body``
    announces a body and closes halfway (IncompleteRead); ``hang`` reads the request and never answers
    (the client's timeout); ``empty`` closes without a word (RemoteDisconnected); ``reset`` resets the
    connection (ConnectionResetError). ``attempts`` counts requests per mode.
    """

    REJECT_BODY = b'{"error": "bad payload: field alerts[0].labels is not accepted here"}'

    def __init__(self, mode: str = OK) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.received: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self._mode = mode
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self.port = self._listen(0).getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._threads: list[threading.Thread] = []
        self.mode = mode

    # -- control --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode = mode
            if mode == REFUSE and self._listener is not None:  # refused from now on, not a moment later
                self._listener.close()
                self._listener = None

    def play(self, script: list[tuple[str, float]]) -> threading.Thread:
        """Run ``[(mode, seconds), ...]`` in the background; the last mode stays."""

        def run() -> None:
            for mode, seconds in script:
                self.mode = mode
                if self._closing.wait(seconds):
                    return

        thread = threading.Thread(target=run, name="faulty-receiver-script", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    def __enter__(self) -> FaultyReceiver:
        thread = threading.Thread(target=self._serve, name="faulty-receiver", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(2)
        if self._listener is not None:
            self._listener.close()

    # -- server ---------------------------------------------------------------------------------
    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        return listener

    def _serve(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                if self._mode != REFUSE and self._listener is None:
                    with contextlib.suppress(OSError):  # the port is briefly busy: try again
                        self._listen(self.port)
                listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                body = read_request(conn)
            except OSError:
                return
            with self._lock:
                mode = self._mode
                self.attempts[mode] = self.attempts.get(mode, 0) + 1
            with contextlib.suppress(OSError):
                self._respond(conn, mode, body)

    def _respond(self, conn: socket.socket, mode: str, body: bytes) -> None:
        if mode == OK:
            with self._lock:
                self.received.append(json.loads(body))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif mode in (ERROR_500, REFUSE):  # REFUSE: a connection accepted just before the switch
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        elif mode == REJECT_400:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(self.REJECT_BODY)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + self.REJECT_BODY)  # fmt: skip
        elif mode == MALFORMED:
            conn.sendall(b"HTTP/1.1 two hundred\r\n\r\n")
        elif mode == CLOSE_MID_BODY:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\npartial")
        elif mode == HANG:
            self._closing.wait(60)
        elif mode == RESET:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # EMPTY: close without answering


def read_request(conn: socket.socket) -> bytes:
    """The body of one HTTP request (headers read up to the blank line, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the body ended")
        body += chunk
    return body
