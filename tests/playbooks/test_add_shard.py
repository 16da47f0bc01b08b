"""add_shard.yml on a lab Mac mini, as an operator meets it: bad input, a dry run, a stop for the
person-only steps, the resume, and reruns that change nothing. The tests run in order on one
lab."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARD = {
    "persona": "sage",
    "shard_number": "1",
    "phone_number": "+15551230001",
    "target_host": "mini-01",
}
USER = "edge_sage_01"
# Builds relay wheels of other versions from the collection's sources.
REPO = Path(__file__).resolve().parents[2]
RELEASE_SCRIPT = REPO / "extensions" / "molecule" / "rolling" / "relay_release.py"


def request(**changes: str) -> dict[str, str]:
    return {**SHARD, **changes}


def assert_nothing_changed(lab) -> None:
    assert lab.shard_rows() == []
    assert not lab.has_user("mini-01", USER)
    assert not lab.host_path("mini-01", "/usr/local/archety").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phone_number": "5550100"}, "phone_number '5550100' is not E.164"),
        ({"phone_number": "+1555"}, "is not E.164"),
        ({"persona": "Sage!"}, "cannot make a macOS short name"),
        ({"persona": "s"}, "cannot make a macOS short name"),
        ({"shard_number": "100"}, "must be a number from 1 to 99"),
        ({"target_host": "mini-09"}, "target_host 'mini-09' is not in the inventory"),
        ({"backend_dsn": "postgresql://postgres@127.0.0.1:1/edge"}, "127.0.0.1"),
        ({"backend_dsn": "mysql://127.0.0.1/edge"}, "backend_dsn must be sqlite"),
        ({"backend_url": "http://127.0.0.1:1"}, "backend_url http://127.0.0.1:1 does not answer"),
        ({"canary_handle": "+15551230001"}, "is the new shard's own number"),
    ],
    ids=[
        "phone-digits",
        "phone-short",
        "persona-chars",
        "persona-short",
        "shard-number",
        "unknown-host",
        "dsn-unreachable",
        "dsn-scheme",
        "backend-unreachable",
        "canary-is-self",
    ],
)
def test_bad_input_stops_before_anything_changes(lab, changes, message):
    run = lab.playbook(**request(**changes))
    assert run.rc != 0, run.output
    assert message in run.output, run.output
    assert "Traceback" not in run.output
    assert_nothing_changed(lab)


def test_a_mac_without_the_command_line_tools_stops_with_instructions(lab):
    lab.edge_lab("clt", "remove", "mini-01")
    try:
        run = lab.playbook(**request())
    finally:
        lab.edge_lab("clt", "install", "mini-01")
    assert run.rc != 0
    assert "python3 on mini-01 (/usr/bin/python3) does not run" in run.output, run.output
    assert "xcode-select --install" in run.output
    assert "Traceback" not in run.output and "deserialization" not in run.output
    assert_nothing_changed(lab)


def test_phone_number_already_in_use_is_refused(lab):
    lab.sql(
        "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, state,"
        " capacity, active_users, created_at, updated_at) VALUES"
        " ('sage-07', 'sage', '+15551230001', 'sage-07', 'mini-01', 'active', 150, 0,"
        " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
    )
    try:
        run = lab.playbook(**request())
        assert run.rc != 0
        assert "+15551230001 is already used by shard sage-07" in run.output, run.output
        assert not lab.has_user("mini-01", USER)
        assert [row[0] for row in lab.shard_rows()] == ["sage-07"]
    finally:
        lab.sql("DELETE FROM persona_shards WHERE shard_id = 'sage-07'")


def test_shard_already_in_use_with_another_number_is_refused(lab):
    lab.sql(
        "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, state,"
        " capacity, active_users, created_at, updated_at) VALUES"
        " ('sage-01', 'sage', '+15551239999', 'sage-01', 'mini-01', 'active', 150, 0,"
        " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
    )
    try:
        run = lab.playbook(**request())
        assert run.rc != 0
        assert "shard sage-01 already exists with phone number +15551239999" in run.output
        assert not lab.has_user("mini-01", USER)
    finally:
        lab.sql("DELETE FROM persona_shards WHERE shard_id = 'sage-01'")


def test_a_number_taken_while_the_play_runs_leaves_no_user_behind(lab):
    # Another run takes the number after this one's checks passed, as its user is made.
    def another_run_takes_the_number():
        lab.sql(
            "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, state,"
            " capacity, active_users, created_at, updated_at) VALUES"
            " ('sage-07', 'sage', '+15551230001', 'sage-07', 'mini-02', 'provisioning', 150, 0,"
            " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
        )

    try:
        run = lab.playbook(
            **request(), at_task=("Create the shard's macOS user", another_run_takes_the_number)
        )
        assert run.rc != 0
        assert "The shard's row was not written" in run.output, run.output
        assert "is already the number of shard sage-07" in run.output
        assert f"The macOS user {USER} this run made is removed again" in run.output
        assert not lab.has_user("mini-01", USER)
        assert not lab.host_path("mini-01", f"/Users/{USER}").exists()
        assert [row[0] for row in lab.shard_rows()] == ["sage-07"]
    finally:
        lab.sql("DELETE FROM persona_shards WHERE shard_id = 'sage-07'")
    assert_nothing_changed(lab)


def test_check_mode_on_a_fresh_host_changes_nothing(lab):
    run = lab.playbook(check_mode=True, **request())
    assert run.rc == 0, run.output
    assert "would install the relay release" in run.output
    assert_nothing_changed(lab)


def test_stops_with_instructions_before_the_gui_login(lab):
    run = lab.playbook(**request())
    assert run.rc != 0
    assert "waiting for a person" in run.output, run.output
    assert f"edge-lab gui login mini-01 {USER}" in run.output
    assert "Traceback" not in run.output
    assert lab.shard_rows() == [("sage-01", "+15551230001", "mini-01", "provisioning")]
    assert lab.has_user("mini-01", USER)


def test_check_mode_reports_the_person_steps_without_failing(lab):
    run = lab.playbook(check_mode=True, **request())
    assert run.rc == 0, run.output
    assert "waits for these steps" in run.output
    assert lab.shard_rows()[0][3] == "provisioning"


def test_resumes_after_the_person_only_steps(lab):
    lab.edge_lab("gui", "login", "mini-01", USER)
    lab.edge_lab("imessage", "signin", "mini-01", USER, "+15551230001")
    lab.edge_lab("grant", "fda", "mini-01")
    lab.edge_lab("grant", "automation", "mini-01", USER)
    run = lab.playbook(**request())
    assert run.rc == 0, run.output
    assert lab.shard_rows() == [("sage-01", "+15551230001", "mini-01", "active")]
    checks = lab.sql("SELECT status FROM canary_checks WHERE shard_id = 'sage-01'")
    assert checks == [("ok",)]


def test_rerun_on_a_serving_shard_changes_nothing_and_sends_no_test_message(lab):
    run = lab.playbook(**request())
    assert run.rc == 0, run.output
    assert run.recap("mini-01")["changed"] == 0, run.output
    assert run.recap("localhost")["changed"] == 0, run.output
    assert len(lab.sql("SELECT id FROM canary_checks")) == 1


def test_check_mode_on_a_serving_shard_changes_nothing(lab):
    run = lab.playbook(check_mode=True, **request())
    assert run.rc == 0, run.output
    assert run.recap("mini-01")["changed"] == 0, run.output


def test_a_failed_health_gate_says_what_to_do(lab, tmp_path):
    # The serving shard's job, held to a gate on a port nothing answers on: the gate fails
    # without anything else changing.
    play = tmp_path / "gate.yml"
    play.write_text(
        "- hosts: mini-01\n"
        "  gather_facts: false\n"
        "  become: true\n"
        "  roles:\n"
        "    - role: archety.edge.relay_job\n"
        "      relay_job_shard_id: sage-01\n"
        f"      relay_job_user: {USER}\n"
        "      relay_job_health_port: 1\n"
        "      relay_job_wait_timeout: 2\n"
    )
    run = lab.playbook(playbook=str(play))
    assert run.rc != 0
    assert run.recap("mini-01")["changed"] == 0, run.output
    assert "not healthy after" in run.output, run.output
    assert f"its log is /Users/{USER}/Library/Logs/edge-relay/relay.log" in run.output
    assert "then run the play again: it picks up where it stopped" in run.output
    assert lab.shard_rows() == [("sage-01", "+15551230001", "mini-01", "active")]


def current_release(lab, user: str) -> str:
    link = f"/Users/{user}/Library/Application Support/edge-relay/current"
    return os.path.basename(os.readlink(lab.host_path("mini-01", link)))


def test_after_a_deploy_shards_keep_and_join_the_deployed_release(lab, tmp_path):
    built = subprocess.run(
        [sys.executable, str(RELEASE_SCRIPT), str(tmp_path), "0.2.0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    wheel = built.stdout.strip().splitlines()[-1]
    deployed = lab.playbook(playbook="deploy.yml", relay_wheel=wheel)
    assert deployed.rc == 0, deployed.output
    assert current_release(lab, USER).startswith("0.2.0-")

    # A rerun of add_shard on the serving shard does not take it back to the collection's build.
    rerun = lab.playbook(**request())
    assert rerun.rc == 0, rerun.output
    assert rerun.recap("mini-01")["changed"] == 0, rerun.output
    assert current_release(lab, USER).startswith("0.2.0-")

    # A new shard on that Mac joins the release its shards run.
    second = request(shard_number="2", phone_number="+15551230002")
    stopped = lab.playbook(**second)
    assert stopped.rc != 0 and "edge-lab gui login" in stopped.output, stopped.output
    lab.edge_lab("gui", "login", "mini-01", "edge_sage_02")
    lab.edge_lab("imessage", "signin", "mini-01", "edge_sage_02", "+15551230002")
    lab.edge_lab("grant", "automation", "mini-01", "edge_sage_02")
    added = lab.playbook(**second)
    assert added.rc == 0, added.output
    assert current_release(lab, "edge_sage_02") == current_release(lab, USER)


def test_a_deploy_of_an_older_build_stops_unless_asked_for(lab):
    # The shards run 0.2.0; without relay_wheel, deploy.yml builds files/relay's older 0.1.0.
    before = current_release(lab, USER)
    refused = lab.playbook(playbook="deploy.yml")
    assert refused.rc != 0
    assert "Shards of mini-01 run 0.2.0, newer than 0.1.0" in refused.output, refused.output
    assert "-e deploy_allow_downgrade=true to roll back on purpose" in refused.output
    assert refused.recap("mini-01")["changed"] == 0
    assert current_release(lab, USER) == before

    asked = lab.playbook(playbook="deploy.yml", check_mode=True, deploy_allow_downgrade="true")
    assert asked.rc == 0, asked.output
    assert "Drain the relay of sage-01" in asked.output
    assert current_release(lab, USER) == before
