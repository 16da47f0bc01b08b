"""/health (JSON) and /metrics (Prometheus) on the loopback address of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

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


def judge_queue(view: QueueView, bounds: HealthConfig, now: float) -> str:
    depth_status = "healthy"
    if view.depth > bounds.depth_critical:
        lasted = view.depth_high_since is not None and (
            now - view.depth_high_since >= bounds.depth_critical_after_s
        )
        depth_status = "critical" if lasted else "warning"
    elif view.depth > bounds.depth_warning:
        depth_status = "warning"

    drop_status = "healthy"
    if view.drops_recent > bounds.drops_warning:
        drop_status = "critical"
    elif view.drops_recent > 0:
        drop_status = "warning"
    return max(depth_status, drop_status, key=RANK.__getitem__)


def overall(checks: Dict[str, Dict[str, Any]], queue_status: str) -> str:
    if not all(check["ok"] for check in checks.values()):
        return "critical"
    return queue_status


class _QueueCollector:
    """Reads the queue figures at scrape time, so /metrics and /health never disagree."""

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
        ):
            counter = CounterMetricFamily(name, f"SendQueue {key} since the queue was created")
            counter.add_metric([], figures[key])
            yield counter
        status = GaugeMetricFamily(
            "edge_relay_status", "Overall status: 0 healthy, 1 warning, 2 critical"
        )
        status.add_metric([], RANK[report["status"]])
        yield status


class HealthServer:
    def __init__(self, host: str, port: int, report: Callable[[], Dict[str, Any]]):
        self.host = host
        self.port = port
        self.report = report
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_QueueCollector(report))
        self._runner: Optional[web.AppRunner] = None

    async def _health(self, _request: web.Request) -> web.Response:
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
