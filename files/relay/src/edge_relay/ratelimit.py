"""Sliding-window rate limiter: at most `limit` sends in any `window_s` seconds."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque


class SlidingWindowLimiter:
    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._stamps: Deque[float] = deque()

    def _forget_old(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window_s:
            self._stamps.popleft()

    def try_acquire(self) -> bool:
        """Takes one slot when the window has room; says whether it did."""
        now = self.clock()
        self._forget_old(now)
        if len(self._stamps) >= self.limit:
            return False
        self._stamps.append(now)
        return True
