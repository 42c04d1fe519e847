"""One emulator session as a stream of actions: the agent loop of a computer-use model. Pure and seeded.

The loop: SCREENSHOT, think (``latency_ms``), then one to three actions, again. Time per step grows
slowly within a session; actions fail at a few percent and are usually retried at the same place; now
and then the agent loops (the same action at the same spot, many times). The outcome is decided at the
start: healthy nodes fail a few percent of tasks, faulty ones most of them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from typing import Any

SCREEN_W, SCREEN_H = 1920, 1080
_ACTIONS = ("CLICK", "TYPE", "KEY", "MOUSE_MOVE", "SCROLL", "WAIT", "DOUBLE_CLICK", "RIGHT_CLICK", "DRAG")
_ACTION_WEIGHTS = (30, 16, 10, 14, 12, 5, 4, 2, 3)
_CUM_WEIGHTS = tuple(itertools.accumulate(_ACTION_WEIGHTS))
_TOTAL_WEIGHT = float(_CUM_WEIGHTS[-1])
_KEYS = (
    "Enter",
    "Tab",
    "ctrl+c",
    "ctrl+v",
    "ctrl+a",
    "Escape",
    "Backspace",
    "ctrl+s",
    "alt+tab",
    "Down",
    "PageDown",
)
_ACTION_ERRORS = ("element_not_found", "timeout", "click_intercepted", "stale_element", "network_error")
_TASK_ERRORS = (
    "goal_not_reached",
    "max_steps_exceeded",
    "site_unreachable",
    "captcha_blocked",
    "login_failed",
)
_FAULTY_ERRORS = ("emulator_crash", "display_init_failed", "gpu_error", "out_of_memory")
ACTION_ERROR_RATE = 0.04
RETRY_RATE = 0.7
LOOP_START_RATE = 0.004


class Session:
    """Yields the actions of one session with ``next_action``; ``outcome`` is COMPLETED or FAILED."""

    def __init__(
        self,
        rng: random.Random,
        session_id: str,
        task_id: str,
        vin: str,
        duration_s: float,
        faulty: bool,
        fail_rate: float,
        interval_s: float = 1.2,
    ) -> None:
        self.rng = rng
        self.session_id = session_id
        self.task_id = task_id
        self.vin = vin
        self.seq = 0
        self.elapsed_ms = 0.0
        self.faulty = faulty
        fails = rng.random() < fail_rate
        self.outcome = "FAILED" if fails else "COMPLETED"
        self.error: str | None = None
        if fails:
            self.error = rng.choice(_FAULTY_ERRORS if faulty else _TASK_ERRORS)
            duration_s *= rng.uniform(0.02, 0.3) if faulty else rng.uniform(0.1, 0.95)
        self.duration_ms = max(2_000.0, duration_s * 1000)
        self._think_mu = math.log(max(0.2, interval_s) * 1000 * 0.75)
        self._pending: list[tuple[str, int | None, int | None]] = []  # queued actions (retries, loops)
        self._since_shot = 99
        self._shot_every = 1
        self._last: tuple[str, int | None, int | None] = ("CLICK", 100, 100)
        self.errors = 0
        self.loops = 0
        self.done = False

    def next_action(self) -> tuple[dict[str, Any], float | None]:
        """The next action record (without ``ts``) and ms until the one after it (None: session over)."""
        rng = self.rng
        self.seq += 1
        if self.elapsed_ms >= self.duration_ms:
            self.done = True
            ok = self.outcome == "COMPLETED"
            return self._record(
                "DONE" if ok else "FAIL", None, None, ok, None if ok else self.error, 0.0
            ), None
        growth = 1.0 + self.seq / 2000.0
        if self._pending:
            action, x, y = self._pending.pop()
            latency = rng.lognormvariate(self._think_mu, 0.4) * growth
        elif self._since_shot >= self._shot_every:
            action, x, y = "SCREENSHOT", None, None
            latency = rng.uniform(40.0, 160.0)
            self._since_shot = 0
            self._shot_every = 1 + int(rng.random() * 3)  # one to three actions per look
        else:
            action = _ACTIONS[bisect.bisect(_CUM_WEIGHTS, rng.random() * _TOTAL_WEIGHT)]
            x = y = None
            if action not in ("KEY", "TYPE", "WAIT"):
                x, y = int(rng.random() * SCREEN_W), int(rng.random() * SCREEN_H)
            latency = rng.lognormvariate(self._think_mu, 0.5) * growth
            self._since_shot += 1
            if rng.random() < LOOP_START_RATE:  # stuck: the same action at the same place, again and again
                self.loops += 1
                self._pending.extend([(action, x, y)] * rng.randint(4, 15))
        ok = rng.random() >= ACTION_ERROR_RATE or action == "SCREENSHOT"
        error = None
        if not ok:
            self.errors += 1
            error = rng.choice(_ACTION_ERRORS)
            if rng.random() < RETRY_RATE:
                self._pending.append((action, x, y))
        self._last = (action, x, y)
        record = self._record(action, x, y, ok, error, latency)
        if action == "TYPE":
            record["text_len"] = max(1, int(rng.lognormvariate(2.8, 0.9)))
        elif action == "KEY":
            record["keys"] = rng.choice(_KEYS)
        gap = latency + (rng.uniform(500, 3000) if action == "WAIT" else rng.uniform(30, 250))
        self.elapsed_ms += gap
        return record, gap

    def _record(
        self, action: str, x: int | None, y: int | None, ok: bool, error: str | None, latency: float
    ) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "task_id": self.task_id,
            "vin": self.vin,
            "ts": 0,
            "seq": self.seq,
            "action": action,
            "x": x,
            "y": y,
            "keys": None,
            "text_len": None,
            "latency_ms": round(latency, 1),
            "ok": ok,
            "error": error,
        }

    def abort(self, error: str) -> dict[str, Any]:
        """The closing FAIL action when the session is stopped from outside (revoke, owner drove off)."""
        self.seq += 1
        self.done = True
        return self._record("FAIL", None, None, False, error, 0.0)
