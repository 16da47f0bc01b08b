"""Sliding-window rate limits of the send path: global, per recipient, and first contact.

Every send takes one slot from the global window. It also takes one from its recipient's
window (a chat guid or a handle), so one busy chat cannot use the whole shard's budget, and,
when it opens a conversation with a handle this account never wrote to, one from the
first-contact window: Apple's spam filters watch new recipients most closely, so opening many
conversations quickly is what puts an account at risk.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque, Dict


class SlidingWindowLimiter:
    """At most `limit` slots in any `window_s` seconds."""

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

    def has_room(self) -> bool:
        self._forget_old(self.clock())
        return len(self._stamps) < self.limit

    def take(self) -> None:
        self._stamps.append(self.clock())

    @property
    def idle(self) -> bool:
        """Whether no slot is held any more (the limiter can be forgotten)."""
        self._forget_old(self.clock())
        return not self._stamps

    def try_acquire(self) -> bool:
        """Takes one slot when the window has room; says whether it did."""
        if not self.has_room():
            return False
        self.take()
        return True


class SendLimits:
    """The three budgets a send must fit in, taken together or not at all."""

    def __init__(
        self,
        per_minute: int,
        per_recipient_per_minute: int,
        first_contact_per_hour: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.overall = SlidingWindowLimiter(per_minute, 60.0, clock)
        self.per_recipient_limit = per_recipient_per_minute
        self.first_contact = SlidingWindowLimiter(first_contact_per_hour, 3600.0, clock)
        self._recipients: Dict[str, SlidingWindowLimiter] = {}

    def _recipient(self, recipient: str) -> SlidingWindowLimiter:
        limiter = self._recipients.get(recipient)
        if limiter is None:
            # Windows that emptied are forgotten, so a shard talking to thousands of people
            # over weeks keeps only the recent ones in memory.
            for name in [n for n, w in self._recipients.items() if w.idle]:
                del self._recipients[name]
            limiter = SlidingWindowLimiter(self.per_recipient_limit, 60.0, self.clock)
            self._recipients[recipient] = limiter
        return limiter

    def blocked_by(self, recipient: str, first_contact: bool) -> str:
        """The budget that holds this send back, or '' when it may go now."""
        if not self.overall.has_room():
            return "overall"
        if not self._recipient(recipient).has_room():
            return "recipient"
        if first_contact and not self.first_contact.has_room():
            return "first_contact"
        return ""

    def try_acquire(self, recipient: str, first_contact: bool) -> bool:
        """Takes a slot from every budget the send counts against, when all have room."""
        if self.blocked_by(recipient, first_contact):
            return False
        self.overall.take()
        self._recipient(recipient).take()
        if first_contact:
            self.first_contact.take()
        return True
