"""archety.edge.edge_health's judgement of a relay's /health, under ansible-test.

The end-to-end suite, against a real HTTP server on 127.0.0.1, is tests/modules/test_edge_health.py.
"""

from ansible_collections.archety.edge.plugins.modules import edge_health


class Params:
    def __init__(self, **given):
        spec = edge_health.argument_spec()
        self.params = dict((name, option.get("default")) for name, option in spec.items())
        self.params.update(given)


def report(depth=0, drops_recent=0, enqueued=100, dropped=0, **extra):
    body = {
        "status": "healthy",
        "version": "0.2.0",
        "shard_id": "sage-01",
        "send_queue": {"depth": depth, "totalEnqueued": enqueued, "totalDropped": dropped},
        "checks": {"chat_db": {"ok": True, "detail": "readable"}},
        "drops_recent": drops_recent,
    }
    body.update(extra)
    return body


def windowed(arrivals_recent=100, depth_high_for_s=None, **given):
    """A report of a relay that gives the figures of its window beside drops_recent."""
    return report(
        arrivals_recent=arrivals_recent, window_s=900.0, depth_high_for_s=depth_high_for_s, **given
    )


def judge(body, at=0.0, **params):
    return edge_health.Gate(Params(**params), 47101).judge(body, at)


def test_fleet_bounds_by_default():
    assert judge(report(depth=10))[0] == "healthy"
    assert judge(report(depth=11))[0] == "warning"
    assert judge(report(drops_recent=1))[0] == "warning"
    assert judge(report(drops_recent=5))[0] == "warning"
    assert judge(report(drops_recent=6))[0] == "critical"


def test_each_bound_is_settable():
    assert judge(report(depth=11), depth_healthy=11)[0] == "healthy"
    assert judge(report(depth=60), depth_critical_after=0)[0] == "critical"
    assert judge(report(depth=60), depth_warning=60, depth_critical_after=0)[0] == "warning"
    assert judge(report(drops_recent=2), drops_healthy=2)[0] == "healthy"
    assert judge(report(drops_recent=6), drops_warning=6)[0] == "warning"


def test_relay_window_depth_duration_is_judged_from_one_read():
    status, reasons = judge(windowed(depth=60, depth_high_for_s=61.0))[:2]
    assert status == "critical"
    assert reasons == ["send queue depth 60 is above 50, and has been for 61.0 s"]
    assert judge(windowed(depth=60, depth_high_for_s=59.0))[0] == "warning"
    # An older relay's single read cannot tell how long the queue has been deep.
    assert judge(report(depth=60, depth_high_for_s=61.0))[0] == "warning"


def test_relay_window_drop_rate_with_its_minimum_sample():
    status, reasons = judge(windowed(drops_recent=2, arrivals_recent=98), drops_warning=9)[:2]
    assert status == "critical"
    assert reasons == [
        "2 sends dropped recently, more than 0",
        "2 of 100 sends offered in the relay's last 900 s dropped (2.0%)",
    ]
    assert judge(windowed(drops_recent=2, arrivals_recent=97), drops_warning=9)[0] == "warning"
    small = windowed(drops_recent=2, arrivals_recent=97)
    assert judge(small, drops_warning=9, drop_rate_min_sample=99)[0] == "critical"


def test_older_relay_rate_is_measured_between_reads():
    gate = edge_health.Gate(Params(), 47101)
    assert gate.judge(report(enqueued=100), 0.0)[0] == "healthy"
    status, reasons = gate.judge(report(enqueued=300, dropped=5), 1.0)[:2]
    assert (status, gate.judged_on) == ("critical", "reads")
    assert reasons == ["5 of 200 sends dropped while waiting (2.5%)"]

    windowed_gate = edge_health.Gate(Params(), 47101)
    windowed_gate.judge(windowed(enqueued=100), 0.0)
    assert windowed_gate.judge(windowed(enqueued=300, dropped=5), 1.0)[:2] == ("healthy", [])
    assert windowed_gate.judged_on == "relay_window"


def test_durations_are_finite_seconds():
    assert [edge_health.duration(v) for v in (0, 2, 61.5)] == [0.0, 2.0, 61.5]
    bad = (True, -1, "3", None, float("inf"), float("nan"))
    assert [edge_health.duration(v) for v in bad] == [None] * 6


def test_failed_check_is_critical_with_its_detail():
    body = report(checks={"gui_session": {"ok": False, "detail": "no GUI session for uid 502"}})
    status, reasons = judge(body)[:2]
    assert status == "critical"
    assert reasons == ["check gui_session failed: no GUI session for uid 502"]


def test_pid_missing_is_hopeless_and_says_the_relay_is_too_old():
    status, reasons, hopeless = judge(report(), pid=4243)
    assert (status, hopeless) == ("critical", True)
    assert reasons == [edge_health.TOO_OLD_FOR_PID]
    assert "too old to report its pid" in reasons[0]
    assert judge(report(pid=4243), pid=4243)[:2] == ("healthy", [])
    assert judge(report(pid=7), pid=4243)[2] is False


def test_figures_are_whole_counts():
    assert [edge_health.count(v) for v in (3, 3.0, 0)] == [3, 3, 0]
    assert [edge_health.count(v) for v in (True, 2.5, -1, "3", None)] == [None] * 5


def test_health_port_is_read_from_the_health_section_only(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(
        "# relay of sage-01\n"
        "shard_id: sage-01\n"
        "backend:\n"
        "  port: 8787\n"
        "\n"
        "health:\n"
        "  # the port the gate reads\n"
        "  host: 127.0.0.1\n"
        "  port: 47101  # allocated by the relay role\n"
    )
    assert edge_health.port_from_config(str(config)) == 47101
