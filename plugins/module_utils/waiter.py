# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One waiting loop for the collection: a monotonic deadline and a pluggable readiness test.

launchd answers before it has acted (``bootout`` returns while the job is still
exiting), so modules poll for the state they need instead of sleeping a fixed time.
The clock and the sleep are parameters so tests can run the loop without waiting.
"""

import time


class WaitResult:
    """What the last probe saw, and whether it satisfied the readiness test."""

    def __init__(self, ready, value, elapsed):
        self.ready = ready
        self.value = value
        self.elapsed = elapsed


def wait_for(probe, ready, timeout, interval=0.5, clock=None, sleep=None, hopeless=None):
    """Call ``probe()`` until ``ready(value)`` is true or ``timeout`` seconds have passed.

    The probe runs at least once, even with a timeout of zero, so a state that is
    already reached is reported without waiting. ``hopeless(value)``, when given, ends
    the wait early on a value that waiting cannot change. Returns a WaitResult holding
    the last value seen, so the caller can explain a timeout with what it observed.
    """
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    start = clock()
    deadline = start + max(0.0, float(timeout))
    while True:
        value = probe()
        if ready(value):
            return WaitResult(True, value, clock() - start)
        remaining = deadline - clock()
        if remaining <= 0 or (hopeless is not None and hopeless(value)):
            return WaitResult(False, value, clock() - start)
        sleep(min(interval, remaining))
