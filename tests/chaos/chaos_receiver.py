"""A webhook receiver on a raw socket that can be down, answer 500, answer malformed HTTP, or be healthy.

http.server cannot send a broken status line or a body shorter than its Content-Length, so this speaks
HTTP/1.1 by hand: one request per connection (``Connection: close``). Only a body answered with 200
counts as received; ``received`` keeps one (fingerprint, STATUS) per alert of such a body, duplicates
included, so a check can tell "at least once" from "exactly once after dedup".

Modes: ``down`` (the listening socket is closed: connection refused), ``500``, ``malformed`` (alternately
a garbage status line and a body cut short of its Content-Length: BadStatusLine and IncompleteRead in
the client) and ``ok``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

from processors.alert_router.testing import read_request  # one HTTP request reader for both fakes

DOWN, ERROR_500, MALFORMED, OK = "down", "500", "malformed", "ok"


class FaultyReceiver:
    def __init__(self, name: str, mode: str = OK) -> None:
        self.name = name
        self.received: list[tuple[str, str]] = []
        self.answers: dict[str, int] = {DOWN: 0, ERROR_500: 0, MALFORMED: 0, OK: 0}
        self.phases: list[tuple[float, str]] = []  # (monotonic time, mode) of every mode change
        self._lock = threading.Lock()
        self._mode = OK
        self._sock: socket.socket | None = None
        self._stopped = threading.Event()
        self._malformed_turn = 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}/alerts"
        self.set_mode(mode)

    # -- control ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.phases.append((time.monotonic(), mode))
            self._mode = mode
            if mode == DOWN:
                self._close_listener()
            elif self._sock is None and not self._stopped.is_set():
                self._listen()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            self._close_listener()

    def distinct(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self.received)

    # -- serving ---------------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True, name=f"rx-{self.name}").start()

    def _close_listener(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed: down or stopped
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            body = read_request(conn)
            mode = self._mode
            with self._lock:
                self.answers[mode] = self.answers.get(mode, 0) + 1
            if mode == ERROR_500:
                conn.sendall(_response(500, b"boom"))
            elif mode == MALFORMED:
                self._malformed_turn += 1
                if self._malformed_turn % 2:
                    conn.sendall(b"HTTP/1.1 2OO SURE\r\nContent-Length: 2\r\n\r\nok")  # BadStatusLine
                else:  # IncompleteRead: 10 of the 100 announced bytes, then the connection closes
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789"
                    )
            elif mode == OK:
                alerts = _alerts_of(body)
                with self._lock:
                    self.received.extend(alerts)
                conn.sendall(_response(200, b"ok"))
            # DOWN: a connection accepted just before the listener closed gets no answer
        except (OSError, ValueError):
            pass
        finally:
            conn.close()


def _response(code: int, body: bytes) -> bytes:
    reason = {200: "OK", 500: "Internal Server Error"}[code]
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _alerts_of(body: bytes) -> list[tuple[str, str]]:
    """(fingerprint, FIRING|RESOLVED) of every alert of an Alertmanager webhook body."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return []
    out = []
    for alert in payload.get("alerts") or [] if isinstance(payload, dict) else []:
        if isinstance(alert, dict) and alert.get("fingerprint"):
            out.append((str(alert["fingerprint"]), str(alert.get("status") or payload.get("status")).upper()))
    return out
