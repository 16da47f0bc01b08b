"""fleet_health.yml and capacity.yml on a lab Mac mini with one serving shard: the table, a sick
shard reported without failing, and the capacity plan beside the fleet."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import LIFECYCLE_SHARD, LIFECYCLE_USER, add_serving_shard

SHARD_ID = "lifecycle-01"
# The UNDRAINED column of a table line.
UNDRAINED = 13


@pytest.fixture(scope="module")
def lab(lifecycle_lab):
    add_serving_shard(lifecycle_lab, LIFECYCLE_SHARD, LIFECYCLE_USER)
    return lifecycle_lab


def table_line(run, shard_id):
    """The cells of the table's line for a shard."""
    match = re.search(rf"^\s*- (mini-\d+\s+{re.escape(shard_id)}\s.*)$", run.output, re.MULTILINE)
    assert match, f"no table line for {shard_id}:\n{run.output}"
    return match.group(1).split()


def test_table_of_a_serving_shard(lab):
    run = lab.playbook(playbook="fleet_health.yml")
    assert run.rc == 0, run.output
    assert re.search(r"HOST\s+SHARD\s+STATE\s+RELEASE\s+STATUS\s+DEPTH\s+ENQ", run.output)
    assert re.search(r"LAST-INBOUND\s+UNDRAINED\s+FAILING-CHECKS", run.output)
    host, shard, state, release, status, depth, enq, deliv, drop, gui, fda, auto, *_ = table_line(
        run, SHARD_ID
    )
    assert (host, shard, state, status) == ("mini-01", SHARD_ID, "active", "healthy")
    assert re.match(r"^\d+\.\d+\.\d+-[0-9a-f]{12}$", release)
    # The canary round trip of add_shard.yml went through the queue.
    assert int(enq) >= 1 and int(deliv) >= 1 and int(depth) == 0 and int(drop) == 0
    assert (gui, fda, auto) == ("yes", "yes", "yes")
    assert run.recap("mini-01")["changed"] == 0
    assert run.output.count("TASK [Print the table]") == 1


def test_a_sick_shard_is_reported_not_failed(lab):
    lab.edge_lab("revoke", "fda", "mini-01")
    try:
        deadline = time.monotonic() + 60
        while True:
            run = lab.playbook(playbook="fleet_health.yml")
            assert run.rc == 0, run.output
            cells = table_line(run, SHARD_ID)
            if cells[4] == "critical" or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert cells[4] == "critical", run.output
        assert cells[10] == "no"
        assert "chat_db" in " ".join(cells[12:])
    finally:
        lab.edge_lab("grant", "fda", "mini-01")


def test_an_unreachable_mac_is_a_line_of_the_table(lab):
    lab.edge_lab("cut", "mini-01")
    try:
        run = lab.playbook(playbook="fleet_health.yml")
    finally:
        lab.edge_lab("restore", "mini-01")
    assert run.rc == 0, run.output
    cells = table_line(run, SHARD_ID)
    assert cells[2:6] == ["active", "-", "Mac", "unreachable"], run.output


def test_a_mac_lost_after_its_facts_were_read_is_unreachable_not_unhealthy(lab):
    task = "Read the health ports given out on this Mac"
    try:
        run = lab.playbook(
            playbook="fleet_health.yml", at_task=(task, lambda: lab.edge_lab("cut", "mini-01"))
        )
    finally:
        lab.edge_lab("restore", "mini-01")
    assert run.rc == 0, run.output
    facts = run.output.split("TASK [Read the Mac's facts]")[1].split("TASK [")[0]
    assert "ok: [mini-01]" in facts, run.output
    cells = table_line(run, SHARD_ID)
    assert cells[2:6] == ["active", "unknown", "Mac", "unreachable"], run.output


def test_the_table_is_ordered_by_mac_then_shard(lab):
    rows = [("zeta-01", "mini-00"), ("alpha-01", "mini-02"), ("alpha-02", "mini-00")]
    for n, (shard_id, host) in enumerate(rows):
        lab.sql(
            "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, state,"
            " capacity, active_users, created_at, updated_at) VALUES"
            " (?, ?, ?, ?, ?, 'active', 150, 0, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            shard_id,
            shard_id.split("-")[0],
            f"+1555999000{n}",
            shard_id,
            host,
        )
    try:
        run = lab.playbook(playbook="fleet_health.yml")
    finally:
        lab.sql("DELETE FROM persona_shards WHERE shard_id IN ('zeta-01', 'alpha-01', 'alpha-02')")
    assert run.rc == 0, run.output
    order = re.findall(r"^\s*- (mini-\d+)\s+([a-z]+-\d+)\s", run.output, re.MULTILINE)
    assert order == [
        ("mini-00", "alpha-02"),
        ("mini-00", "zeta-01"),
        ("mini-01", SHARD_ID),
        ("mini-02", "alpha-01"),
    ], run.output
    assert table_line(run, "zeta-01")[4:7] == ["Mac", "not", "in"]


def test_a_killed_relay_shows_as_an_undrained_stop(lab):
    uid = lab.host_path("mini-01", f"/Users/{LIFECYCLE_USER}").stat().st_uid
    job = f"gui/{uid}/com.archety.edge.relay.{SHARD_ID}"

    def relay_pid():
        printed = lab.edge_lab("exec", "mini-01", "launchctl", "print", job).stdout
        match = re.search(r"^\s*pid = (\d+)$", printed, re.MULTILINE)
        return match.group(1) if match else None

    before = int(table_line(lab.playbook(playbook="fleet_health.yml"), SHARD_ID)[UNDRAINED])
    killed = relay_pid()
    assert killed, "the shard's relay is not running"
    lab.edge_lab("exec", "mini-01", "kill", "-9", killed)
    # launchd starts it again; the new run finds the last one never drained.
    deadline = time.monotonic() + 90
    while True:
        run = lab.playbook(playbook="fleet_health.yml")
        assert run.rc == 0, run.output
        cells = table_line(run, SHARD_ID)
        if cells[4] == "healthy" and cells[UNDRAINED] != str(before):
            break
        assert time.monotonic() < deadline, run.output
        time.sleep(3)
    assert int(cells[UNDRAINED]) == before + 1
    assert relay_pid() not in (None, killed)


def test_capacity_plan_beside_the_fleet(lab):
    run = lab.playbook(
        "-e", '{"capacity_users": {"lifecycle": 2000, "nova": 500}}', playbook="capacity.yml"
    )
    assert run.rc == 0, run.output
    lines = {
        m.group(1): m.group(2).split()
        for m in re.finditer(r"^\s*- (lifecycle|nova|all personas)\s+(.*)$", run.output, re.M)
    }
    # users, shards, Mac minis, shards now, capacity now, users now, Macs now, shards to add
    assert lines["lifecycle"][:4] == ["2000", "14", "4", "1"]
    assert lines["lifecycle"][-1] == "13"
    assert lines["nova"][:4] == ["500", "4", "1", "0"]
    assert lines["all personas"][:3] == ["2500", "18", "5"]


@pytest.mark.parametrize(
    "users",
    ['{"capacity_users": {"lifecycle": -5}}', '{"capacity_users": {"lifecycle": "lots"}}'],
    ids=["negative", "not-a-number"],
)
def test_capacity_refuses_bad_counts(lab, users):
    run = lab.playbook("-e", users, playbook="capacity.yml")
    assert run.rc != 0
    assert "users must" in run.output, run.output
    count = json.loads(users)["capacity_users"]["lifecycle"]
    assert f"Not a number of users: lifecycle: {count}." in run.output, run.output
    assert "Traceback" not in run.output and "Finalization" not in run.output


def test_capacity_needs_user_counts(lab):
    run = lab.playbook(playbook="capacity.yml")
    assert run.rc != 0
    assert "capacity_users must map each persona to its number of users" in run.output
