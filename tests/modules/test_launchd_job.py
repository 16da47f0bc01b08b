"""archety.edge.launchd_job against launchctl as it behaves on macOS 14."""

import hashlib
import os
import plistlib

import pytest
from ansible_collections.archety.edge.plugins.module_utils.waiter import wait_for
from ansible_collections.archety.edge.plugins.modules import launchd_job
from launchd_fakes import PRINT_TEMPLATE, FakeLaunchd
from module_support import run_module

LABEL = "com.archety.edge.relay.sage-01"
TARGET = "gui/502/" + LABEL


@pytest.fixture
def plist(tmp_path):
    path = tmp_path / (LABEL + ".plist")
    write_plist(path, ["/usr/local/archety/edge/current/bin/edge-relay", "run"])
    return path


def write_plist(path, arguments, label=LABEL):
    with open(path, "wb") as handle:
        plistlib.dump({"Label": label, "ProgramArguments": arguments, "KeepAlive": True}, handle)
    os.chmod(path, 0o644)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(launchd, tmp_path, check_mode=False, **args):
    args.setdefault("label", LABEL)
    if "user" not in args:
        args.setdefault("uid", 502)
    args.setdefault("state_dir", str(tmp_path / "state"))
    return run_module(launchd_job.main, args, launchd, check_mode=check_mode, diff=True)


def changing(launchd):
    return [call[1:] for call in launchd.calls if call[1] in ("bootstrap", "bootout")]


def test_bootstraps_waits_for_running_then_rerun_is_ok(plist, tmp_path):
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, plist=str(plist))

    assert result["changed"] is True
    assert result["domain"] == "gui/502"
    assert result["state"] == "running"
    assert result["pid"] == 4243
    assert result["plist_sha256"] == sha256(plist)
    assert result["commands"] == [f"/usr/sbin/launchctl bootstrap gui/502 {plist}"]
    record = tmp_path / "state" / "gui-502" / (LABEL + ".sha256")
    assert record.read_text().strip() == sha256(plist)

    again = run(launchd, tmp_path, plist=str(plist))
    assert again["changed"] is False
    assert again["commands"] == []
    assert again["pid"] == 4243


def test_changed_plist_is_booted_out_waited_for_and_bootstrapped(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    write_plist(plist, ["/usr/local/archety/edge/current/bin/edge-relay", "run", "-v"])
    launchd.exit_probes = 3
    launchd.calls.clear()

    result = run(launchd, tmp_path, plist=str(plist))

    assert result["changed"] is True
    assert changing(launchd) == [["bootout", TARGET], ["bootstrap", "gui/502", str(plist)]]
    assert result["plist_sha256"] == sha256(plist)
    assert result["diff"]["before"]["plist_sha256"] != result["diff"]["after"]["plist_sha256"]
    assert result["state"] == "running"


def test_job_loaded_without_a_record_is_reloaded_once(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.loaded(502, LABEL, str(plist))
    result = run(launchd, tmp_path, plist=str(plist))
    assert result["changed"] is True
    assert [c[0] for c in changing(launchd)] == ["bootout", "bootstrap"]
    assert run(launchd, tmp_path, plist=str(plist))["changed"] is False


def test_check_mode_reports_the_reload_and_touches_nothing(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.loaded(502, LABEL, str(plist))
    result = run(launchd, tmp_path, check_mode=True, plist=str(plist))

    assert result["changed"] is True
    assert result["commands"] == [
        f"/usr/sbin/launchctl bootout {TARGET}",
        f"/usr/sbin/launchctl bootstrap gui/502 {plist}",
    ]
    assert changing(launchd) == []
    assert not (tmp_path / "state").exists()


def test_no_gui_session_says_to_log_the_user_in(plist, tmp_path):
    launchd = FakeLaunchd(gui_uids=())
    result = run(launchd, tmp_path, plist=str(plist), user="root")
    assert result.failed
    assert result["msg"] == (
        "gui/0 does not exist: root has no GUI login session on this Mac. Log root in at "
        "the login window (fast user switching keeps it logged in), then run again."
    )


def test_bootstrap_125_says_to_log_the_user_in(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.refuse_bootstrap = (
        125,
        "",
        "Bootstrap failed: 125: Domain does not support specified action\n",
    )
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert "gui/502 does not exist" in result["msg"]
    assert "Log the user with uid 502 in at the login window" in result["msg"]


def test_bootstrap_5_is_explained(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.refuse_bootstrap = (5, "", "Bootstrap failed: 5: Input/output error\n")
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert "failed (exit 5): Bootstrap failed: 5: Input/output error." in result["msg"]
    assert "still exiting" in result["msg"]
    assert not (tmp_path / "state" / "gui-502" / (LABEL + ".sha256")).exists()


def test_bootstrap_refused_for_ownership_is_explained(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.refuse_bootstrap = (
        5,
        "",
        f"{plist}: Path had bad ownership/permissions\nBootstrap failed: 5: Input/output error\n",
    )
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert "refused" in result["msg"] and "root:wheel" in result["msg"]


def test_job_that_exits_reports_its_last_exit_code(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.crash_with = "78: EX_CONFIG"
    result = run(launchd, tmp_path, plist=str(plist), wait_timeout=0.6)
    assert result.failed
    assert "did not reach state running within 0.6 s" in result["msg"]
    assert "state = not running, last exit code = 78: EX_CONFIG" in result["msg"]


def test_group_writable_plist_is_refused_before_launchctl_runs(plist, tmp_path):
    os.chmod(plist, 0o664)
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert "group- or world-writable (mode 0664)" in result["msg"]
    assert launchd.calls == []


def test_invalid_plist_fails_with_plutil_output(tmp_path):
    bad = tmp_path / "bad.plist"
    bad.write_text("<plist><dict><key>Label</key>")
    os.chmod(bad, 0o644)
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, plist=str(bad))
    assert result.failed
    assert result["msg"] == f"plist {bad} is not valid: {bad}: Encountered unknown tag on line 1"
    assert changing(launchd) == []


def test_label_mismatch_is_refused(tmp_path):
    other = tmp_path / "other.plist"
    write_plist(other, ["/bin/true"], label="com.archety.edge.relay.sage-02")
    result = run(FakeLaunchd(), tmp_path, plist=str(other))
    assert result.failed
    assert "has Label 'com.archety.edge.relay.sage-02', not" in result["msg"]


def test_booted_out_waits_until_gone_and_forgets_the_plist(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.exit_probes = 3

    result = run(launchd, tmp_path, state="booted_out")
    assert result["changed"] is True
    assert result["state"] == "not loaded" and result["pid"] is None
    assert (502, LABEL) not in launchd.jobs
    assert not (tmp_path / "state" / "gui-502" / (LABEL + ".sha256")).exists()

    assert run(launchd, tmp_path, state="booted_out")["changed"] is False


def test_bootout_that_never_finishes_times_out_with_what_it_saw(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.exit_probes = 10**6
    result = run(launchd, tmp_path, state="booted_out", wait_timeout=0.5)
    assert result.failed
    assert f"{TARGET} was still loaded 0.5 s after bootout (state = running" in result["msg"]


def test_restarted_always_reloads_and_never_kickstarts(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.calls.clear()
    result = run(launchd, tmp_path, state="restarted", plist=str(plist))
    assert result["changed"] is True
    assert changing(launchd) == [["bootout", TARGET], ["bootstrap", "gui/502", str(plist)]]
    assert result["pid"] == 4244


def test_unknown_user_is_a_sentence(plist, tmp_path):
    result = run(FakeLaunchd(), tmp_path, plist=str(plist), user="edge_nobody_99")
    assert result.failed
    assert result["msg"] == "user edge_nobody_99 does not exist on this Mac: create it first."


def test_print_parsing_reads_only_the_jobs_own_keys():
    text = PRINT_TEMPLATE.format(
        uid=502,
        label=LABEL,
        plist="/x.plist",
        state="running",
        active=1,
        runs=3,
        pid_line="\tpid = 977\n",
        last_exit="(never exited)",
    )
    job = launchd_job.parse_print(text)
    assert job == {
        "loaded": True,
        "state": "running",
        "pid": 977,
        "last_exit_code": "(never exited)",
    }


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_waiter_stops_at_the_deadline_with_the_last_value():
    clock = Clock()
    probes = []
    result = wait_for(
        lambda: probes.append(clock.now) or len(probes),
        lambda n: n > 100,
        timeout=2,
        interval=0.5,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.ready is False
    assert result.value == 5
    assert probes == [100.0, 100.5, 101.0, 101.5, 102.0]


def test_waiter_gives_up_early_on_a_hopeless_value():
    clock = Clock()
    result = wait_for(
        iter([1, 2, 3, 4]).__next__,
        lambda n: n > 10,
        timeout=60,
        interval=1,
        clock=clock,
        sleep=clock.sleep,
        hopeless=lambda n: n == 2,
    )
    assert result.ready is False and result.value == 2 and result.elapsed == 1


def test_waiter_returns_as_soon_as_ready():
    clock = Clock()
    result = wait_for(iter([1, 2, 3]).__next__, lambda n: n == 2, 10, 1, clock, clock.sleep)
    assert result.ready is True and result.value == 2 and result.elapsed == 1


def test_loaded_unchanged_job_that_is_not_running_is_left_to_launchd_with_a_warning(
    plist, tmp_path
):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    job = launchd.jobs[(502, LABEL)]
    job.update(state="not running", pid=None, last_exit="1")
    launchd.calls.clear()

    result = run(launchd, tmp_path, plist=str(plist))
    assert result["changed"] is False
    assert changing(launchd) == []
    assert result.warning_texts == [
        f"{TARGET} is loaded but not running (last exit code 1); its plist is unchanged, "
        "so it is left to launchd."
    ]


def test_booted_out_without_a_gui_session_has_nothing_to_do(tmp_path):
    launchd = FakeLaunchd(gui_uids=())
    result = run(launchd, tmp_path, state="booted_out")
    assert not result.failed, result.get("msg")
    assert result["changed"] is False
    assert result["state"] == "not loaded"
