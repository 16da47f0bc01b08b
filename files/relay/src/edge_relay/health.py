"""/health (JSON) and /metrics (Prometheus) on the loopback address of the configuration.

Beside the queue figures, /health checks what a person may have to fix: chat.db readable
(Full Disk Access), the user's GUI session (the relay drives Messages inside it), the backend,
inbound events the backend would not take (parked), and how long ago the last incoming message
arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge_relay.config import HealthConfig

RANK = {"healthy": 0, "warning": 1, "critical": 2}


@dataclass
class QueueView:
    """What the status is judged on: the queue now and its recent past."""

    depth: int
    depth_high_since: Optional[float]  # when depth last rose above the critical bound
    drops_recent: int
    # Commands taken into the queue in the same window: with the drops, the rate's base.
    arrivals_recent: int = 0


def drop_rate(view: QueueView, bounds: HealthConfig) -> Optional[float]:
    """Drops over everything offered in the window; None below the minimum sample."""
    offered = view.drops_recent + view.arrivals_recent
    if offered < bounds.drop_rate_min_sample:
        return None
    return view.drops_recent / offered


def depth_high_for(view: QueueView, bounds: HealthConfig, now: float) -> Optional[float]:
    """Seconds the depth has stayed above the critical bound; None while it is not above.

    A depth that rose since the queue loop last looked has no start yet: it counts as 0 s.
    """
    if view.depth <= bounds.depth_critical:
        return None
    if view.depth_high_since is None:
        return 0.0
    return max(0.0, now - view.depth_high_since)


def judge_queue(view: QueueView, bounds: HealthConfig, now: float) -> str:
    depth_status = "healthy"
    high_for = depth_high_for(view, bounds, now)
    if high_for is not None:
        lasted = high_for >= bounds.depth_critical_after_s
        depth_status = "critical" if lasted else "warning"
    elif view.depth > bounds.depth_warning:
        depth_status = "warning"

    drop_status = "healthy"
    if view.drops_recent > bounds.drops_warning:
        drop_status = "critical"
    elif view.drops_recent > 0:
        drop_status = "warning"

    rate = drop_rate(view, bounds)
    rate_status = "healthy"
    if rate is not None and rate >= bounds.drop_rate_critical:
        rate_status = "critical"
    elif rate:
        rate_status = "warning"
    return max(depth_status, drop_status, rate_status, key=RANK.__getitem__)


def overall(checks: Dict[str, Dict[str, Any]], queue_status: str) -> str:
    """Critical when a check failed; warning when one warns; else the queue's status."""
    if not all(check["ok"] for check in checks.values()):
        return "critical"
    if any(check.get("warning") for check in checks.values()):
        return max(queue_status, "warning", key=RANK.__getitem__)
    return queue_status


class GuiSession:
    """Whether the user's GUI session exists: `launchctl print gui/<uid>` exits 0.

    The answer is kept for `max_age_s`; a stale one is refreshed in the background, so a
    report never waits on launchctl (the /health handler refreshes before answering).
    """

    def __init__(self, launchctl: str, uid: int, max_age_s: float = 10.0, timeout_s: float = 5.0):
        self.launchctl = launchctl
        self.uid = uid
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.ok = True
        self.detail = "not checked yet"
        self.checked_at: Optional[float] = None
        self._running: Optional[asyncio.Future[None]] = None

    async def refresh(self) -> None:
        if self.checked_at is not None and time.monotonic() - self.checked_at < self.max_age_s:
            return
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        await asyncio.shield(self._running)

    async def _run(self) -> None:
        self.ok, self.detail = await gui_session(self.launchctl, self.uid, self.timeout_s)
        self.checked_at = time.monotonic()

    def check(self) -> Dict[str, Any]:
        stale = self.checked_at is None or time.monotonic() - self.checked_at >= self.max_age_s
        if stale and (self._running is None or self._running.done()):
            # Without a running event loop (a caller outside the relay) the answer stays as is.
            with contextlib.suppress(RuntimeError):
                self._running = asyncio.ensure_future(self._run())
        return {"ok": self.ok, "detail": self.detail}


async def gui_session(launchctl: str, uid: int, timeout_s: float = 5.0) -> Tuple[bool, str]:
    """(ok, sentence) for the GUI session of `uid`, asked of launchctl."""
    fix = "log the user in at the GUI (or set up automatic login for it)"
    try:
        proc = await asyncio.create_subprocess_exec(
            launchctl,
            "print",
            f"gui/{uid}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as error:
        return False, f"cannot ask launchctl ({launchctl}: {error.strerror})"
    try:
        code = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"launchctl print gui/{uid} did not answer within {timeout_s:g} s"
    if code != 0:
        return False, f"no GUI session for uid {uid} (launchctl exited {code}): {fix}"
    return True, f"GUI session gui/{uid} is up"


APPLE_EPOCH_UNIX = 978307200
# Messages dates: seconds since 2001 before macOS 10.13, nanoseconds since (far above this).
NANOSECOND_DATES_ABOVE = 10**11


def newest_incoming(chat_db: str, busy_timeout_s: float = 0.5) -> Optional[float]:
    """Unix time of the newest incoming message in chat.db, None when there is none.

    Raises sqlite3.Error when chat.db cannot be read (the chat_db check reports why).
    """
    conn = sqlite3.connect(
        f"file:{quote(chat_db)}?mode=ro", uri=True, timeout=busy_timeout_s, isolation_level=None
    )
    try:
        row = conn.execute(
            "SELECT date FROM message WHERE is_from_me = 0 ORDER BY ROWID DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    if not row or not row[0]:
        return None
    value = row[0]
    seconds = value / 1e9 if abs(value) > NANOSECOND_DATES_ABOVE else float(value)
    return APPLE_EPOCH_UNIX + seconds


def inbound_check(chat_db: str, bounds: HealthConfig, now: float) -> Dict[str, Any]:
    """The age of the last incoming message; a warning past the configured quiet bound."""
    try:
        newest = newest_incoming(chat_db)
    except sqlite3.Error:
        return {"ok": True, "detail": "unknown: chat.db cannot be read", "age_s": None}
    if newest is None:
        return {"ok": True, "detail": "no incoming message yet", "age_s": None}
    age = max(0.0, now - newest)
    check: Dict[str, Any] = {
        "ok": True,
        "detail": f"last incoming message {age:.0f} s ago",
        "age_s": round(age, 1),
    }
    quiet = bounds.inbound_quiet_warning_s
    if quiet and age > quiet:
        check["warning"] = True
        check["detail"] += f", longer than health.inbound_quiet_warning_s ({quiet:g} s)"
    return check


def backend_refused_check(parked: int, oldest: Optional[str]) -> Dict[str, Any]:
    """A warning while any inbound event is parked: the relay goes on, a person decides."""
    if not parked:
        return {"ok": True, "detail": "no inbound event parked", "parked": 0}
    return {
        "ok": True,
        "warning": True,
        "parked": parked,
        "oldest_guid": oldest,
        "detail": (
            f"{parked} inbound event(s) the backend would not take are parked, the oldest "
            f"{oldest}; `edge-relay parked` lists them and `edge-relay parked --retry` "
            "forwards them again"
        ),
    }


class _ReportCollector:
    """Reads the report's figures at scrape time, so /metrics and /health never disagree."""

    def __init__(self, report: Callable[[], Dict[str, Any]]):
        self.report = report

    def collect(self):
        report = self.report()
        figures = report["send_queue"]
        depth = GaugeMetricFamily(
            "edge_relay_send_queue_depth", "Send commands waiting in the SendQueue"
        )
        depth.add_metric([], figures["depth"])
        yield depth
        for name, key in (
            ("edge_relay_send_queue_enqueued", "totalEnqueued"),
            ("edge_relay_send_queue_delivered", "totalDelivered"),
            ("edge_relay_send_queue_dropped", "totalDropped"),
            ("edge_relay_send_queue_expired", "totalExpired"),
            ("edge_relay_send_queue_uncertain", "totalUncertain"),
        ):
            counter = CounterMetricFamily(name, f"SendQueue {key} since the queue was created")
            counter.add_metric([], figures[key])
            yield counter
        parked = report["inbound"]
        counter = CounterMetricFamily(
            "edge_relay_inbound_parked", "Inbound events parked since the state was created"
        )
        counter.add_metric([], parked["totalParked"])
        yield counter
        waiting = GaugeMetricFamily(
            "edge_relay_inbound_parked_waiting",
            "Inbound events parked and not yet taken by the backend",
        )
        waiting.add_metric([], parked["parked"])
        yield waiting
        reads = CounterMetricFamily(
            "edge_relay_chatdb_reads", "Reads of chat.db since the relay started"
        )
        reads.add_metric([], parked["chatDbReads"])
        yield reads
        stops = CounterMetricFamily(
            "edge_relay_undrained_stops",
            "Runs of the relay that stopped without draining (killed, crashed, power lost)",
        )
        stops.add_metric([], report["undrained_stops"]["total"])
        yield stops
        status = GaugeMetricFamily(
            "edge_relay_status", "Overall status: 0 healthy, 1 warning, 2 critical"
        )
        status.add_metric([], RANK[report["status"]])
        yield status


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        report: Callable[[], Dict[str, Any]],
        refresh: Optional[Callable[[], Awaitable[None]]] = None,
    ):
        self.host = host
        self.port = port
        self.report = report
        self.refresh = refresh
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ReportCollector(report))
        self._runner: Optional[web.AppRunner] = None

    async def _health(self, _request: web.Request) -> web.Response:
        if self.refresh is not None:
            await self.refresh()
        report = self.report()
        code = 503 if report["status"] == "critical" else 200
        return web.json_response(report, status=code)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
