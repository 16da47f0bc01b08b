"""remove_shard.yml on a lab Mac mini with a serving shard: bad input, a dry run, a refused row
deletion, the removal, its rerun, and the removal of the user and the row. The tests run in
order on one lab."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import LIFECYCLE_SHARD, LIFECYCLE_USER, add_serving_shard

SHARD_ID = "lifecycle-01"
LABEL = f"com.archety.edge.relay.{SHARD_ID}"
PLIST = f"/Users/{LIFECYCLE_USER}/Library/LaunchAgents/{LABEL}.plist"
REQUEST = {"persona": "lifecycle", "shard_number": "1"}


@pytest.fixture(scope="module")
def lab(lifecycle_lab):
    add_serving_shard(lifecycle_lab, LIFECYCLE_SHARD, LIFECYCLE_USER)
    return lifecycle_lab


def remove(lab, check_mode=False, **extra):
    return lab.playbook(playbook="remove_shard.yml", check_mode=check_mode, **{**REQUEST, **extra})


def state(lab):
    rows = lab.sql("SELECT state FROM persona_shards WHERE shard_id = ?", SHARD_ID)
    return rows[0][0] if rows else None


def job_loaded(lab):
    uid = lab.host_path("mini-01", f"/Users/{LIFECYCLE_USER}").stat().st_uid
    try:
        lab.edge_lab("exec", "mini-01", "launchctl", "print", f"gui/{uid}/{LABEL}")
    except subprocess.CalledProcessError:
        return False
    return True


def assert_serving(lab):
    assert state(lab) == "active"
    assert lab.host_path("mini-01", PLIST).exists()
    assert job_loaded(lab)


def test_unknown_shard_names_the_known_ones(lab):
    run = remove(lab, shard_number="7")
    assert run.rc != 0
    assert "shard lifecycle-07 is not in the backend" in run.output, run.output
    assert "lifecycle-01" in run.output
    assert "Traceback" not in run.output
    assert_serving(lab)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"persona": "Life!"}, "persona 'Life!' is not a persona name"),
        ({"shard_number": "100"}, "shard_number '100' must be a number from 1 to 99"),
        ({"remove_user": "maybe"}, "take true or false"),
    ],
    ids=["persona", "shard-number", "flag"],
)
def test_bad_input_stops_before_anything_changes(lab, extra, message):
    run = remove(lab, **extra)
    assert run.rc != 0
    assert message in run.output, run.output
    assert_serving(lab)


def test_a_shard_host_other_than_the_rows_is_refused(lab, tmp_path):
    # Another Mac in the inventory, never contacted: the request is refused on the controller.
    other = tmp_path / "other.yml"
    other.write_text("mac_minis:\n  hosts:\n    mini-02:\n      ansible_host: 127.0.79.250\n")
    run = lab.playbook(
        "-i", str(other), playbook="remove_shard.yml", **{**REQUEST, "shard_host": "mini-02"}
    )
    assert run.rc != 0
    assert "shard lifecycle-01 runs on mini-01, not on mini-02" in run.output, run.output
    assert_serving(lab)


def test_check_mode_changes_nothing(lab):
    run = remove(lab, check_mode=True)
    assert run.rc == 0, run.output
    assert run.recap("mini-01")["changed"] > 0, run.output
    assert_serving(lab)


def test_deleting_the_row_is_refused_while_users_are_assigned(lab):
    lab.sql(
        "INSERT INTO user_assignments (persona, handle, shard_id, assigned_at)"
        " VALUES ('lifecycle', '+15557779999', ?, '2026-01-01T00:00:00Z')",
        SHARD_ID,
    )
    try:
        run = remove(lab, delete_row="true")
        assert run.rc != 0
        assert "delete_row=true is refused" in run.output, run.output
        assert "still has 1 assigned users" in run.output
        assert_serving(lab)
    finally:
        lab.sql("DELETE FROM user_assignments WHERE shard_id = ?", SHARD_ID)


def health_ports(lab):
    path = lab.host_path("mini-01", "/usr/local/archety/edge/health-ports.json")
    return json.loads(path.read_text())


def test_removes_the_shard_and_keeps_its_user(lab):
    assert SHARD_ID in health_ports(lab)
    run = remove(lab)
    assert run.rc == 0, run.output
    assert SHARD_ID not in health_ports(lab)
    assert state(lab) == "disabled"
    assert not lab.host_path("mini-01", PLIST).exists()
    assert not job_loaded(lab)
    assert lab.has_user("mini-01", LIFECYCLE_USER)


def test_add_shard_refuses_the_disabled_shard_before_anything_changes(lab):
    agents = lab.host_path("mini-01", f"/Users/{LIFECYCLE_USER}/Library/LaunchAgents")
    before = sorted(agents.iterdir())
    run = lab.playbook(**LIFECYCLE_SHARD)
    assert run.rc != 0
    assert "shard lifecycle-01 is disabled in the backend" in run.output, run.output
    assert "delete_row=true" in run.output
    assert state(lab) == "disabled"
    assert sorted(agents.iterdir()) == before
    assert not job_loaded(lab)


def test_rerun_changes_nothing(lab):
    run = remove(lab)
    assert run.rc == 0, run.output
    assert run.recap("mini-01")["changed"] == 0, run.output
    assert run.recap("localhost")["changed"] == 0, run.output
    assert state(lab) == "disabled"


def test_deletes_the_row_and_keeps_the_user(lab):
    run = remove(lab, delete_row="true")
    assert run.rc == 0, run.output
    assert state(lab) is None
    assert lab.has_user("mini-01", LIFECYCLE_USER)


def test_without_its_row_the_user_is_removed_only_from_the_mac_named(lab):
    unnamed = remove(lab, remove_user="true", delete_row="true")
    assert unnamed.rc == 0, unnamed.output
    assert "To remove its macOS user, add -e shard_host=" in unnamed.output, unnamed.output
    assert lab.has_user("mini-01", LIFECYCLE_USER)

    unknown = remove(lab, remove_user="true", shard_host="mini-09")
    assert unknown.rc != 0
    assert "shard_host 'mini-09' is not in the inventory" in unknown.output, unknown.output
    assert lab.has_user("mini-01", LIFECYCLE_USER)

    run = remove(lab, remove_user="true", shard_host="mini-01")
    assert run.rc == 0, run.output
    assert "removing only the relay job" in run.output, run.output
    assert not lab.has_user("mini-01", LIFECYCLE_USER)
    assert run.recap("localhost")["changed"] == 0

    again = remove(lab, remove_user="true", shard_host="mini-01")
    assert again.rc == 0, again.output
    assert again.recap("mini-01")["changed"] == 0, again.output

    done = remove(lab, remove_user="true", delete_row="true")
    assert done.rc == 0, done.output
    assert "has no row in the backend: nothing left to remove" in done.output
    assert done.recap("localhost")["changed"] == 0
