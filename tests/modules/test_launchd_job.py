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


IO_ERROR = (5, "", "Bootstrap failed: 5: Input/output error\n")
ALREADY = (37, "", "Bootstrap failed: 37: Operation already in progress\n")


@pytest.mark.parametrize("refusal", [IO_ERROR, ALREADY], ids=["5", "37"])
def test_bootstrap_right_after_its_own_bootout_is_tried_again(plist, tmp_path, refusal):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.bootstrap_refusals = [refusal, refusal]
    launchd.calls.clear()

    result = run(launchd, tmp_path, state="restarted", plist=str(plist))

    assert not result.failed, result["msg"]
    assert result["state"] == "running"
    assert [c[0] for c in changing(launchd)] == ["bootout"] + ["bootstrap"] * 3
    assert result["commands"] == [
        f"/usr/sbin/launchctl bootout {TARGET}",
        f"/usr/sbin/launchctl bootstrap gui/502 {plist}",
    ]


def test_label_launchd_never_lets_go_after_bootout_fails_within_the_wait(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.bootstrap_refusals = [ALREADY] * 1000

    result = run(launchd, tmp_path, state="restarted", plist=str(plist), wait_timeout=0.6)

    assert result.failed
    assert result["msg"] == (
        f"launchctl bootstrap gui/502 {plist} failed (exit 37): Bootstrap failed: 37: Operation "
        f"already in progress. launchd still held {LABEL} 0.6 s after it was booted out: its "
        f"process may not exit. Check it with `launchctl print {TARGET}`, or raise wait_timeout."
    )


def test_bootstrap_37_without_a_bootout_is_not_retried(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.bootstrap_refusals = [ALREADY, ALREADY]
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert (
        "failed (exit 37): Bootstrap failed: 37: Operation already in progress." in (result["msg"])
    )
    assert (
        "is already loaded in gui/502, or a previous instance is still exiting" in (result["msg"])
    )
    assert len([c for c in changing(launchd) if c[0] == "bootstrap"]) == 1


@pytest.mark.parametrize(
    "answer, advice",
    [
        (
            (119, "", "Bootstrap failed: 119: Service is disabled\n"),
            f"{LABEL} is disabled in gui/502: enable it with `launchctl enable {TARGET}`, then "
            "run again.",
        ),
        (
            (122, "", "Bootstrap failed: 122: Path had bad ownership/permissions\n"),
            "launchd refused {plist} for its owner or permissions: make it owned by root:wheel "
            "(or the user) with mode 0644.",
        ),
        (
            (1, "", "Bootstrap failed: 1: Operation not permitted\n"),
            "Run the task as root (become: true): only root acts on another user's gui domain.",
        ),
        (
            (2, "", "Bootstrap failed: 2: No such file or directory\n"),
            "{plist} went away after it was checked: write it again, then run again.",
        ),
        (
            (113, "", "Bootstrap failed: 113: Could not find specified service\n"),
            "launchd found no job in {plist}: check its Label and Program.",
        ),
        (
            (78, "", "Bootstrap failed: 78: Function not implemented\n"),
            "Read the job's plist and the system log for the reason.",
        ),
    ],
    ids=["119-disabled", "122-permissions", "1-not-root", "2-gone", "113-no-job", "other"],
)
def test_each_bootstrap_failure_says_what_to_do(plist, tmp_path, answer, advice):
    launchd = FakeLaunchd()
    launchd.refuse_bootstrap = answer
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    said = answer[2].strip()
    assert result["msg"] == (
        f"launchctl bootstrap gui/502 {plist} failed (exit {answer[0]}): {said}. "
        + advice.format(plist=plist)
    )
    assert result["commands"] == [f"/usr/sbin/launchctl bootstrap gui/502 {plist}"]
    assert not (tmp_path / "state" / "gui-502" / (LABEL + ".sha256")).exists()


def test_bootout_answered_36_is_waited_on_like_any_other(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.bootout_in_progress = True
    result = run(launchd, tmp_path, state="booted_out")
    assert not result.failed, result["msg"]
    assert result["changed"] is True and result["state"] == "not loaded"
    assert (502, LABEL) not in launchd.jobs


@pytest.mark.parametrize(
    "answer, ending",
    [
        (
            (1, "", "Boot-out failed: 1: Operation not permitted\n"),
            "Run the task as root (become: true): only root acts on another user's gui domain.",
        ),
        (
            (5, "", "Boot-out failed: 5: Input/output error\n"),
            "Read the system log for the reason.",
        ),
    ],
    ids=["1-not-root", "5"],
)
def test_bootout_failure_is_explained_and_the_record_kept(plist, tmp_path, answer, ending):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.refuse_bootout = answer
    result = run(launchd, tmp_path, state="booted_out")
    assert result.failed
    assert result["msg"] == (
        f"launchctl bootout {TARGET} failed (exit {answer[0]}): {answer[2].strip()}. {ending}"
    )
    assert (tmp_path / "state" / "gui-502" / (LABEL + ".sha256")).exists()


def test_bootout_125_after_the_user_logged_out_says_to_log_in(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    launchd.refuse_bootout = (
        125,
        "",
        "Boot-out failed: 125: Domain does not support specified action\n",
    )
    result = run(launchd, tmp_path, state="restarted", plist=str(plist))
    assert result.failed
    assert result["msg"].startswith("gui/502 does not exist: the user with uid 502 has no GUI")


def test_print_failure_other_than_not_found_is_reported(plist, tmp_path):
    launchd = FakeLaunchd()
    launchd.refuse_print = (64, "", "Unrecognized target specifier.\n")
    result = run(launchd, tmp_path, plist=str(plist))
    assert result.failed
    assert result["msg"] == (
        f"launchctl print {TARGET} failed (exit 64): Unrecognized target specifier."
    )


def test_state_dir_that_cannot_be_written_is_a_sentence(plist, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, plist=str(plist), state_dir=str(blocker))
    assert result.failed
    assert result["msg"].startswith(
        f"cannot keep the plist's SHA-256 in {blocker}/gui-502/{LABEL}.sha256 ("
    )
    assert result["msg"].endswith(
        "): the job runs, but the next run will reload it once. Give a state_dir that root "
        "can write."
    )


def test_record_that_cannot_be_removed_is_a_sentence(plist, tmp_path):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))
    record = tmp_path / "state" / "gui-502" / (LABEL + ".sha256")
    record.unlink()
    record.mkdir()
    result = run(launchd, tmp_path, state="booted_out")
    assert result.failed
    assert "the next run may judge the job by a plist it no longer runs" in result["msg"]


def test_check_mode_before_the_plist_is_written_lists_the_commands(tmp_path):
    missing = tmp_path / (LABEL + ".plist")
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, check_mode=True, plist=str(missing))
    assert not result.failed, result["msg"]
    assert result["changed"] is True
    assert result["commands"] == [f"/usr/sbin/launchctl bootstrap gui/502 {missing}"]
    assert result["diff"]["before"] == {"loaded": False, "plist_sha256": None}
    assert result["state"] == "running" and result["pid"] is None

    launchd.loaded(502, LABEL, "/elsewhere.plist")
    reload = run(launchd, tmp_path, check_mode=True, plist=str(missing))
    assert reload["commands"] == [
        f"/usr/sbin/launchctl bootout {TARGET}",
        f"/usr/sbin/launchctl bootstrap gui/502 {missing}",
    ]
    assert changing(launchd) == []


def test_missing_plist_outside_check_mode_is_refused(tmp_path):
    missing = tmp_path / "gone.plist"
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, plist=str(missing))
    assert result.failed
    assert result["msg"] == (
        f"plist {missing} cannot be read: No such file or directory. Write it first."
    )
    assert launchd.calls == []


def test_plist_plutil_accepts_but_python_cannot_read_is_refused(tmp_path):
    odd = tmp_path / "odd.plist"
    odd.write_text("not a property list at all")
    os.chmod(odd, 0o644)

    def lenient(argv, data):
        return 0, f"{odd}: OK\n", ""

    result = run(lenient, tmp_path, plist=str(odd))
    assert result.failed
    assert result["msg"].startswith(f"plist {odd} could not be read as a property list: ")


def test_wait_timeout_must_be_positive(plist, tmp_path):
    result = run(FakeLaunchd(), tmp_path, plist=str(plist), wait_timeout=0)
    assert result.failed
    assert result["msg"] == "wait_timeout must be more than 0 seconds."


def test_restarted_job_that_was_not_loaded_is_only_bootstrapped(plist, tmp_path):
    launchd = FakeLaunchd()
    result = run(launchd, tmp_path, state="restarted", plist=str(plist))
    assert result["changed"] is True
    assert changing(launchd) == [["bootstrap", "gui/502", str(plist)]]


def test_job_launchd_drops_right_after_bootstrap_is_reported(plist, tmp_path):
    launchd = FakeLaunchd()

    def forgetful(argv, data):
        answer = launchd(argv, data)
        if argv[1] == "bootstrap":
            launchd.jobs.clear()
        return answer

    result = run(forgetful, tmp_path, plist=str(plist), wait_timeout=0.5)
    assert result.failed
    assert result["msg"] == (
        f"{TARGET} did not reach state running within 0.5 s (launchd lost it again: check that "
        f"the Label in {plist} is {LABEL}). Read the job's log (StandardErrorPath in its plist) "
        "for why it exits."
    )


@pytest.mark.parametrize(
    "answer",
    [
        (3, "", "Boot-out failed: 3: No such process\n"),
        (113, "", "Boot-out failed: 113: Could not find specified service\n"),
    ],
    ids=["3", "113"],
)
def test_job_gone_between_print_and_bootout_is_booted_out_already(plist, tmp_path, answer):
    launchd = FakeLaunchd()
    run(launchd, tmp_path, plist=str(plist))

    def exits_first(argv, data):
        if argv[1] == "bootout":
            launchd.jobs.clear()
            return answer
        return launchd(argv, data)

    result = run(exits_first, tmp_path, state="booted_out")
    assert not result.failed, result["msg"]
    assert result["state"] == "not loaded"
    assert result["commands"] == [f"/usr/sbin/launchctl bootout {TARGET}"]
    assert not (tmp_path / "state" / "gui-502" / (LABEL + ".sha256")).exists()
