"""archety.edge.edge_health against a real HTTP server on 127.0.0.1 serving crafted /health."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.archety.edge.plugins.modules import edge_health
from module_support import run_module

# A process that is alive for the whole test: the pid the gate is asked to judge.
STARTED = os.getpid()


def health(status="healthy", depth=0, enqueued=100, dropped=0, drops_recent=0, **extra):
    """/health of an older relay: no figures of its window beside drops_recent."""
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


def windowed(arrivals_recent=100, window_s=900.0, depth_high_for_s=None, **given):
    """/health of a relay that reports the window its queue status is judged on."""
    return health(
        arrivals_recent=arrivals_recent,
        window_s=window_s,
        depth_high_for_s=depth_high_for_s,
        **given,
    )


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
                if isinstance(body, str):
                    # Not the relay: something else answering on its port.
                    data, code, kind = body.encode(), 200, "text/plain"
                else:
                    data, kind = json.dumps(body).encode(), "application/json"
                    critical = isinstance(body, dict) and body.get("status") == "critical"
                    code = 503 if critical else 200
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
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


def test_deep_queue_is_a_warning_until_it_lasts_then_critical(relay):
    relay.bodies = [health(depth=73, status="critical")]
    started = time.monotonic()
    result = run(port=relay.port, timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.failed
    assert result["status"] == "warning"
    assert "send queue depth 73 is above 50 (critical if it stays so for 60 s)" in result["msg"]
    assert relay.reads > 1

    relay.reads = 0
    lasting = run(port=relay.port, timeout=0.5, depth_critical_after=0.2)
    assert lasting.failed
    assert lasting["status"] == "critical"
    assert re.search(
        r"send queue depth 73 is above 50, and has been for 0\.[2-9] s", lasting["msg"]
    )


class Params:
    """A module's params with this module's defaults, for judging reads at chosen times."""

    def __init__(self, **given):
        spec = edge_health.argument_spec()
        self.params = dict((name, option.get("default")) for name, option in spec.items())
        self.params.update(given)


def test_depth_turns_critical_only_after_staying_deep_and_starts_again_after_a_dip():
    gate = edge_health.Gate(Params(port=47101), 47101)
    deep, shallow = health(depth=80), health(depth=30)
    timeline = [
        (deep, 0.0, "warning"),
        (deep, 59.0, "warning"),
        (deep, 60.0, "critical"),
        (shallow, 61.0, "warning"),
        (deep, 62.0, "warning"),
        (deep, 121.5, "warning"),
        (deep, 122.0, "critical"),
    ]
    for body, at, expected in timeline:
        status, reasons, hopeless = gate.judge(body, at)
        assert (at, status) == (at, expected), reasons
        assert hopeless is False
    assert reasons == ["send queue depth 80 is above 50, and has been for 60.0 s"]


def test_depth_bounds_are_settable(relay):
    relay.bodies = [health(depth=60)]
    assert run(port=relay.port, timeout=0, depth_critical_after=0)["status"] == "critical"
    settled = run(port=relay.port, timeout=0, depth_warning=70, depth_critical_after=0)
    assert settled["status"] == "warning"
    assert settled["reasons"] == ["send queue depth 60 is above 10"]
    assert not run(port=relay.port, timeout=0, depth_healthy=60, depth_warning=70).failed


def test_an_old_incident_does_not_keep_the_relay_from_passing(relay):
    # 40 drops long ago: in the totals since the queue was made, not in the recent window.
    relay.bodies = [health(enqueued=1000, dropped=40, drops_recent=0)]
    result = run(port=relay.port, timeout=0)
    assert not result.failed, result["msg"]
    assert result["status"] == "healthy" and result["reasons"] == []


def test_drop_rate_bound_is_settable(relay):
    relay.bodies = [health(enqueued=100), health(enqueued=300, dropped=5)]
    result = run(port=relay.port, timeout=0.3, stable_for=0.2, drop_rate_warning=0.05)
    assert result.failed
    assert result["status"] == "warning"
    assert "5 of 200 sends dropped while waiting (2.5%)" in result["msg"]


def test_pid_of_the_process_started_passes(relay):
    relay.bodies = [health(pid=STARTED)]
    result = run(port=relay.port, timeout=0, pid=STARTED)
    assert not result.failed, result
    assert result["health"]["pid"] == STARTED


def test_another_pid_is_waited_on_until_the_started_process_answers(relay):
    relay.bodies = [health(pid=4100), health(pid=4100), health(pid=STARTED)]
    assert not run(port=relay.port, timeout=2, pid=STARTED).failed

    relay.bodies, relay.reads = [health(pid=4100)], 0
    result = run(port=relay.port, timeout=0.3, pid=STARTED)
    assert result.failed
    assert f"the relay answering is pid 4100, not {STARTED}" in result["msg"]


def test_a_started_process_that_exited_fails_at_once(relay):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    relay.bodies = [health(pid=4100)]
    started = time.monotonic()
    result = run(port=relay.port, timeout=30, pid=exited.pid)
    assert result.failed
    assert f"the relay started as pid {exited.pid} has exited" in result["msg"]
    assert time.monotonic() - started < 10
    assert relay.reads == 0


def test_relay_without_pid_is_too_old_and_fails_at_once(relay):
    started = time.monotonic()
    result = run(port=relay.port, timeout=5, pid=STARTED)
    assert time.monotonic() - started < 2
    assert result.failed
    assert relay.reads == 1
    assert result["status"] == "critical"
    assert (
        "the relay is too old to report its pid (its /health has no pid): upgrade the relay, "
        "or leave pid out"
    ) in result["msg"]
    assert not run(port=relay.port, timeout=0).failed, "without pid, an older relay passes"


def test_figures_that_are_not_counts_are_named_not_a_traceback(relay):
    body = health()
    body["send_queue"]["depth"] = "lots"
    body["drops_recent"] = -1
    body["checks"] = "all fine"
    relay.bodies = [body]
    result = run(port=relay.port, timeout=0)
    assert result.failed
    assert result["status"] == "critical"
    assert result["reasons"] == [
        "the relay reported send_queue.depth as 'lots', not a count",
        "the relay reported drops_recent as -1, not a count",
    ]


def test_something_else_on_the_port_is_not_a_relay(relay):
    relay.bodies = ["<html>hello</html>"]
    result = run(port=relay.port, timeout=0)
    assert result.failed and result["status"] == "unreachable"
    assert f"http://127.0.0.1:{relay.port}/health did not answer JSON" in result["msg"]
    relay.bodies = [[1, 2, 3]]
    listed = run(port=relay.port, timeout=0)
    assert "did not answer a JSON object" in listed["msg"]


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
    assert result["judged_on"] == "reads"


def test_one_read_finds_a_queue_the_relay_saw_deep_for_long_critical(relay):
    relay.bodies = [windowed(depth=73, depth_high_for_s=75.0, status="critical")]
    result = run(port=relay.port, timeout=0)
    assert result.failed
    assert result["status"] == "critical"
    assert result["judged_on"] == "relay_window"
    assert result["reasons"] == ["send queue depth 73 is above 50, and has been for 75.0 s"]
    assert relay.reads == 1

    relay.bodies = [windowed(depth=73, depth_high_for_s=12.0)]
    recent = run(port=relay.port, timeout=0)
    assert recent["status"] == "warning"
    assert "send queue depth 73 is above 50 (critical if it stays so for 60 s)" in recent["msg"]
    assert run(port=relay.port, timeout=0, depth_critical_after=10)["status"] == "critical"


def test_a_depth_the_relay_does_not_time_is_timed_from_the_first_read(relay):
    # The gate's bound (30) is below the relay's (50): the relay reports no duration for 40.
    relay.bodies = [windowed(depth=40, depth_high_for_s=None)]
    once = run(port=relay.port, timeout=0, depth_warning=30)
    assert once["status"] == "warning"
    assert "(critical if it stays so for 60 s)" in once["msg"]
    lasting = run(port=relay.port, timeout=0.5, depth_warning=30, depth_critical_after=0.2)
    assert lasting["status"] == "critical"
    assert re.search(r"depth 40 is above 30, and has been for 0\.[2-9] s", lasting["msg"])


def test_the_drop_rate_is_the_relay_window_s(relay):
    # Three drops are only a warning by their count; over 100 sends offered they are 3%.
    relay.bodies = [windowed(drops_recent=3, arrivals_recent=97)]
    result = run(port=relay.port, timeout=0, allow_warning=True)
    assert result.failed
    assert result["status"] == "critical"
    assert result["judged_on"] == "relay_window"
    assert result["reasons"] == [
        "3 sends dropped recently, more than 0",
        "3 of 100 sends offered in the relay's last 900 s dropped (3.0%)",
    ]
    assert relay.reads == 1

    relay.bodies = [windowed(drops_recent=3, arrivals_recent=997)]
    low = run(port=relay.port, timeout=0, allow_warning=True)
    assert not low.failed, low["msg"]
    assert "3 of 1000 sends offered in the relay's last 900 s dropped (0.3%)" in low["reasons"]


def test_the_relay_window_s_totals_since_creation_do_not_count(relay):
    # Totals that grew by 5 drops while waiting: an older relay's measure, not the window's.
    relay.bodies = [windowed(enqueued=100), windowed(enqueued=300, dropped=5)]
    result = run(port=relay.port, timeout=0.3, stable_for=0.2)
    assert not result.failed, result["msg"]
    assert result["reasons"] == []


def test_a_small_window_is_judged_by_its_drops_count_only(relay):
    relay.bodies = [windowed(drops_recent=1, arrivals_recent=9)]
    result = run(port=relay.port, timeout=0, allow_warning=True)
    assert not result.failed, result["msg"]
    assert result["reasons"] == ["1 sends dropped recently, more than 0"]
    every = run(port=relay.port, timeout=0, allow_warning=True, drop_rate_min_sample=0)
    assert every["status"] == "critical"
    assert "1 of 10 sends offered in the relay's last 900 s dropped (10.0%)" in every["msg"]


def test_window_figures_that_are_not_figures_are_named(relay):
    relay.bodies = [windowed(depth=80, depth_high_for_s="long", arrivals_recent=-3, window_s=[])]
    result = run(port=relay.port, timeout=0)
    assert result.failed
    assert result["status"] == "critical"
    assert result["reasons"] == [
        "the relay reported depth_high_for_s as 'long', not seconds",
        "send queue depth 80 is above 50 (critical if it stays so for 60 s)",
        "the relay reported arrivals_recent as -3, not a count",
        "the relay reported window_s as [], not seconds",
    ]


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
    assert result["judged_on"] is None


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


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(depth_healthy=60, depth_warning=50), "healthy bound must be at most its warning"),
        (dict(drops_healthy=-1), "drops_healthy must be 0 or more."),
        (dict(drop_rate_min_sample=-1), "drop_rate_min_sample must be 0 or more."),
        (dict(drop_rate_warning=0), "drop_rate_warning 0 is not a rate"),
        (dict(drop_rate_warning=1.5), "drop_rate_warning 1.5 is not a rate"),
        (dict(depth_critical_after=-1), "depth_critical_after must be 0 or more seconds."),
        (dict(timeout=-1), "timeout and stable_for must be 0 or more, interval more than 0."),
        (dict(interval=0), "timeout and stable_for must be 0 or more, interval more than 0."),
        (dict(pid=0), "pid 0 is not a process id (1 or more)."),
        (dict(port=70000), "port 70000 is not a TCP port (1 to 65535)."),
    ],
)
def test_bad_bounds_are_refused_before_reading(relay, args, message):
    args.setdefault("port", relay.port)
    result = run(**args)
    assert result.failed
    assert message in result["msg"]
    assert relay.reads == 0


@pytest.mark.parametrize(
    "ports, message",
    [
        ("[47101]", "is not a JSON object of shard ids and ports"),
        ('{"sage-01": "47101"}', "the health port of shard sage-01 in {path} is '47101', not"),
        ('{"sage-01": 0}', "the health port of shard sage-01 in {path} is 0, not a TCP port"),
        ("{", "cannot read the health ports of this Mac from {path}"),
    ],
)
def test_a_broken_ports_file_is_a_sentence(tmp_path, ports, message):
    path = tmp_path / "health-ports.json"
    path.write_text(ports)
    result = run(shard_id="sage-01", ports_file=str(path), timeout=0)
    assert result.failed
    assert message.format(path=path) in result["msg"]


def test_unreadable_relay_configuration_is_named(tmp_path):
    missing = tmp_path / "config.yml"
    result = run(config=str(missing), timeout=0)
    assert result.failed
    assert result["msg"].startswith(f"cannot read the relay configuration {missing}: ")


def test_check_mode_before_the_ports_file_exists_is_not_a_failure(tmp_path):
    missing = tmp_path / "health-ports.json"
    result = run(check_mode=True, shard_id="sage-01", ports_file=str(missing))
    assert not result.failed, result["msg"]
    assert result["skipped"] is True and result["port"] is None
    assert result["msg"].startswith("check mode: the health port is not known yet (cannot read")
    assert run(shard_id="sage-01", ports_file=str(missing), timeout=0).failed
