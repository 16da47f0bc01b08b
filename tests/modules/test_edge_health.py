"""archety.edge.edge_health against a real HTTP server on 127.0.0.1 serving crafted /health."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.archety.edge.plugins.modules import edge_health
from module_support import run_module


def health(status="healthy", depth=0, enqueued=100, dropped=0, drops_recent=0, **extra):
    body = {
        "status": status,
        "version": "0.2.0",
        "shard_id": "sage-01",
        "send_queue": {
            "depth": depth,
            "totalEnqueued": enqueued,
            "totalDelivered": enqueued - dropped - depth,
            "totalDropped": dropped,
        },
        "checks": {
            "chat_db": {"ok": True, "detail": "readable"},
            "backend": {"ok": True, "detail": "reachable"},
        },
        "queue_status": "healthy",
        "drops_recent": drops_recent,
    }
    body.update(extra)
    return body


class Relay:
    """Answers /health with the next body of a script; the last one is kept once reached."""

    def __init__(self):
        self.bodies = [health()]
        self.reads = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/health":
                    self.send_error(404)
                    return
                body = relay.bodies[min(relay.reads, len(relay.bodies) - 1)]
                relay.reads += 1
                data = json.dumps(body).encode()
                self.send_response(503 if body.get("status") == "critical" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay():
    server = Relay()
    yield server
    server.stop()


def run(check_mode=False, **args):
    args.setdefault("interval", 0.05)
    return run_module(edge_health.main, args, None, check_mode=check_mode)


def test_healthy_relay_passes_at_once(relay):
    result = run(port=relay.port, timeout=5, version="0.2.0", shard_id="sage-01")
    assert not result.failed, result
    assert result["status"] == "healthy"
    assert result["changed"] is False
    assert result["health"]["send_queue"]["depth"] == 0
    assert relay.reads == 1


def test_waits_until_the_relay_turns_healthy(relay):
    relay.bodies = [health(depth=30), health(depth=12), health(depth=2)]
    result = run(port=relay.port, timeout=5)
    assert not result.failed, result
    assert relay.reads == 3


def test_deep_queue_fails_at_the_deadline_naming_the_figure(relay):
    relay.bodies = [health(depth=73, status="critical")]
    started = time.monotonic()
    result = run(port=relay.port, timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.failed
    assert result["status"] == "critical"
    assert "send queue depth 73 is above 50" in result["msg"]
    assert relay.reads > 1


def test_depth_between_the_bounds_is_a_warning_that_passes_only_when_allowed(relay):
    relay.bodies = [health(depth=20)]
    refused = run(port=relay.port, timeout=0)
    assert refused.failed
    assert refused["status"] == "warning"
    assert "send queue depth 20 is above 10" in refused["msg"]
    assert not run(port=relay.port, timeout=0, allow_warning=True).failed
    assert not run(port=relay.port, timeout=0, depth_healthy=25).failed


def test_recent_drops_are_judged_by_the_settable_bounds(relay):
    relay.bodies = [health(drops_recent=3)]
    assert run(port=relay.port, timeout=0)["status"] == "warning"
    relay.bodies = [health(drops_recent=6)]
    result = run(port=relay.port, timeout=0)
    assert result["status"] == "critical"
    assert "6 sends dropped recently, more than 5" in result["msg"]
    assert not run(port=relay.port, timeout=0, drops_healthy=6, drops_warning=10).failed


def test_drops_while_waiting_are_a_rate(relay):
    relay.bodies = [health(enqueued=100), health(enqueued=300, dropped=5)]
    result = run(port=relay.port, timeout=0.3, stable_for=0.2)
    assert result.failed
    assert "5 of 200 sends dropped while waiting (2.5%)" in result["msg"]
    assert result["status"] == "critical"


def test_failed_check_is_named_with_its_detail(relay):
    body = health(status="critical")
    body["checks"]["chat_db"] = {"ok": False, "detail": "no Full Disk Access"}
    relay.bodies = [body]
    result = run(port=relay.port, timeout=0.2)
    assert result.failed
    assert "check chat_db failed: no Full Disk Access" in result["msg"]


def test_wrong_version_is_not_the_release_deployed(relay):
    result = run(port=relay.port, timeout=0, version="0.3.0")
    assert result.failed
    assert "runs version 0.2.0, not 0.3.0" in result["msg"]


def test_relay_of_another_shard_on_the_port_is_refused(relay, tmp_path):
    result = run(port=relay.port, timeout=0, shard_id="sage-02")
    assert result.failed
    assert "shard sage-01" in result["msg"]


def test_stable_for_catches_a_relay_that_falls_over(relay):
    relay.bodies = [health(), health(), health(status="critical", depth=80)]
    result = run(port=relay.port, timeout=0.3, stable_for=0.5)
    assert result.failed
    assert "depth 80" in result["msg"]
    relay.bodies = [health()]
    relay.reads = 0
    result = run(port=relay.port, timeout=1, stable_for=0.2)
    assert not result.failed
    assert relay.reads >= 3
    assert result["elapsed"] >= 0.2


def test_no_relay_listening_says_so(relay):
    port = relay.port
    relay.stop()
    result = run(port=port, timeout=0.2)
    assert result.failed
    assert result["status"] == "unreachable"
    assert f"no answer from http://127.0.0.1:{port}/health" in result["msg"]


def test_port_from_the_ports_file_by_shard_id(relay, tmp_path):
    ports = tmp_path / "health-ports.json"
    ports.write_text(json.dumps({"sage-01": relay.port, "sage-02": 1}))
    result = run(shard_id="sage-01", ports_file=str(ports), timeout=0)
    assert not result.failed, result
    assert result["port"] == relay.port
    missing = run(shard_id="sage-09", ports_file=str(ports), timeout=0)
    assert missing.failed
    assert "shard sage-09 has no health port" in missing["msg"]
    assert "sage-01, sage-02" in missing["msg"]


def test_port_from_the_relay_configuration(relay, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(
        "shard_id: sage-01\nbackend:\n  url: http://127.0.0.1:8787\n  port: 1\n"
        f"health:\n  host: 127.0.0.1\n  port: {relay.port}\nlog_level: INFO\n"
    )
    result = run(config=str(config), timeout=0)
    assert not result.failed, result
    assert result["port"] == relay.port
    config.write_text("shard_id: sage-01\n")
    assert "has no health.port" in run(config=str(config), timeout=0)["msg"]


def test_check_mode_reads_nothing(relay):
    result = run(check_mode=True, port=relay.port, timeout=5)
    assert not result.failed
    assert result["changed"] is False
    assert result["skipped"] is True
    assert relay.reads == 0


def test_bad_bounds_are_refused_before_reading(relay):
    result = run(port=relay.port, depth_healthy=60, depth_warning=50)
    assert result.failed
    assert "healthy bound must be at most its warning bound" in result["msg"]
    assert relay.reads == 0
