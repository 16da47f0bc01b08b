"""The lab's launchd: real supervision of jobs, and launchctl's answers as on macOS 14.

Each test runs its own daemon (a subprocess, as root) on a temporary host root whose
/etc/passwd holds users that exist nowhere else: the daemon must setuid to them.
"""

import os
import plistlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "lab"
sys.path.insert(0, str(LAB))

from edge_lab import launchd  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="launchd starts jobs as other users")

USER_UID = 60123
OTHER_UID = 60124
PASSWD = f"""\
root:x:0:0:System Administrator:/var/root:/bin/sh
edge_t:x:{USER_UID}:20:Test shard:/Users/edge_t:/bin/sh
edge_u:x:{OTHER_UID}:20:Other shard:/Users/edge_u:/bin/sh
"""
GROUP = """\
wheel:x:0:root
everyone:x:12:
staff:x:20:root
admin:x:80:root,edge_t
"""
# Users cannot reach the venv's interpreter (it lives under /root); Debian's python3 runs
# the stand-ins for them, with only the standard library and the lab package.
USER_PYTHON = "/usr/bin/python3"


def wait_until(predicate, timeout=8.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Host:
    """A temporary host root with its own launchd."""

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "launchd.sock"
        self.logs = root / "logs"
        self.agents = root / "Users/edge_t/Library/LaunchAgents"
        self.daemon = None

    @property
    def env(self):
        return dict(
            os.environ,
            EDGE_LAB_ROOT=str(self.root),
            EDGE_LAB_LAUNCHD_SOCKET=str(self.socket),
            PYTHONPATH=str(LAB),
        )

    def start(self):
        with open(self.root / "launchd.log", "wb") as daemon_log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "edge_lab.launchd", "--socket", str(self.socket)],
                env=self.env,
                stderr=daemon_log,
            )
        wait_until(self.socket.exists, timeout=10)

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def request(self, op, **args):
        return launchd.request(self.socket, op, **args)

    def launchctl(self, *args, uid=None):
        python = USER_PYTHON if uid else sys.executable
        return subprocess.run(
            [python, "-m", "edge_lab.standins.launchctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=20,
            user=uid,
        )

    def plist(self, label, arguments, mode=0o644, owner=0, **keys):
        path = self.agents / f"{label}.plist"
        with open(path, "wb") as fh:
            plistlib.dump({"Label": label, "ProgramArguments": arguments, **keys}, fh)
        os.chown(path, owner, 0)
        os.chmod(path, mode)
        return path

    def service(self, label, uid=USER_UID):
        answer = self.request("print", target=f"gui/{uid}/{label}")
        return answer.get("service")


@pytest.fixture
def host():
    root = Path(tempfile.mkdtemp(prefix="edge-lab-launchd-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    h = Host(root)
    h.agents.mkdir(parents=True)
    h.logs.mkdir()
    os.chown(h.logs, USER_UID, 20)
    h.start()
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_bootstrap_without_gui_session_fails_with_125(host):
    path = host.plist("com.test.nosession", ["/bin/sleep", "30"], RunAtLoad=True)

    result = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path))

    assert result.returncode == 125
    assert "Bootstrap failed: 125: Domain does not support specified action" in result.stderr
    assert host.launchctl("print", f"gui/{USER_UID}/com.test.nosession").returncode == 113


def test_job_runs_as_its_user_with_minimal_environment(host):
    workdir = host.root / "work"
    workdir.mkdir()
    out = host.logs / "out.log"
    host.plist(
        "com.test.identity",
        ["/bin/sh", "-c", 'id -u; id -g; id -G; echo "$PATH"; pwd; echo "$SHARD"; echo "$HOME"'],
        StandardOutPath=str(out),
        WorkingDirectory=str(workdir),
        EnvironmentVariables={"SHARD": "sage-01"},
        RunAtLoad=True,
    )

    answer = host.request("gui_login", uid=USER_UID)

    assert answer["loaded"] == ["com.test.identity"]
    lines = wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 7 and out)
    uid, gid, groups, path, cwd, shard, home = lines.read_text().splitlines()[:7]
    assert (uid, gid) == (str(USER_UID), "20")
    assert set(groups.split()) == {"20", "80"}
    assert path == "/usr/bin:/bin:/usr/sbin:/sbin"
    assert cwd == str(workdir)
    assert shard == "sage-01"
    assert home == "/Users/edge_t"
    # The log file is created by the job's user, not by launchd's root.
    assert out.stat().st_uid == USER_UID
    assert wait_until(lambda: host.service("com.test.identity")["last_exit"] == 0)


def test_keepalive_restarts_a_killed_job(host):
    host.request("gui_login", uid=USER_UID)
    path = host.plist("com.test.keep", ["/bin/sleep", "60"], KeepAlive=True, ThrottleInterval=1)
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0
    first = wait_until(lambda: host.service("com.test.keep")["pid"])

    os.kill(first, signal.SIGKILL)

    wait_until(lambda: host.service("com.test.keep")["pid"] not in (None, first))
    service = host.service("com.test.keep")
    assert service["runs"] == 2
    printed = host.launchctl("print", f"gui/{USER_UID}/com.test.keep").stdout
    assert "state = running" in printed and f"pid = {service['pid']}" in printed
    assert "last terminating signal = Killed: 9" in printed


def test_throttle_interval_delays_the_respawn_of_a_short_job(host):
    starts = host.logs / "starts"
    host.plist(
        "com.test.throttle",
        ["/bin/sh", "-c", f"date +%s.%N >> {starts}"],
        KeepAlive=True,
        ThrottleInterval=2,
    )
    host.request("gui_login", uid=USER_UID)

    wait_until(lambda: host.service("com.test.throttle")["state"] == "spawn scheduled")
    times = wait_until(
        lambda: starts.exists() and len(starts.read_text().split()) >= 2 and starts, timeout=6
    )
    first, second = (float(t) for t in times.read_text().split()[:2])
    assert 1.8 <= second - first < 4


def test_bootout_returns_while_the_job_exits_and_bootstrap_meanwhile_fails_with_5(host):
    host.request("gui_login", uid=USER_UID)
    script = "trap 'sleep 1.5; exit 0' TERM; while :; do sleep 0.1; done"
    path = host.plist("com.test.slow", ["/bin/sh", "-c", script], RunAtLoad=True)
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0
    wait_until(lambda: host.service("com.test.slow")["pid"])
    time.sleep(0.3)  # let the shell install its trap

    started = time.monotonic()
    bootout = host.launchctl("bootout", f"gui/{USER_UID}/com.test.slow")

    assert bootout.returncode == 0 and time.monotonic() - started < 1.4
    assert host.launchctl("print", f"gui/{USER_UID}/com.test.slow").returncode == 0
    again = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path))
    assert again.returncode == 5
    assert "Bootstrap failed: 5: Input/output error" in again.stderr

    wait_until(lambda: host.launchctl("print", f"gui/{USER_UID}/com.test.slow").returncode == 113)
    gone = host.launchctl("print", f"gui/{USER_UID}/com.test.slow")
    assert f'Could not find service "com.test.slow" in domain for user gui: {USER_UID}' in (
        gone.stderr
    )
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0


def test_insecure_or_unreadable_plists_are_refused(host):
    host.request("gui_login", uid=USER_UID)
    writable = host.plist("com.test.writable", ["/bin/sleep", "30"], mode=0o666, RunAtLoad=True)
    foreign = host.plist("com.test.foreign", ["/bin/sleep", "30"], owner=OTHER_UID)
    broken = host.agents / "com.test.broken.plist"
    broken.write_text("<plist><dict><key>Label</key>")

    for path in (writable, foreign):
        result = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path))
        assert result.returncode == 122, result.stderr
        assert "Path had bad ownership/permissions" in result.stderr
    result = host.launchctl("bootstrap", f"gui/{USER_UID}", str(broken))
    assert result.returncode == 5 and "plutil -lint" in result.stderr

    listing = host.launchctl("print", f"gui/{USER_UID}").stdout
    assert "com.test.writable" not in listing and "com.test.foreign" not in listing


def test_home_in_a_log_path_is_not_expanded_and_the_spawn_exits_78(host):
    host.plist(
        "com.test.home",
        ["/bin/echo", "hello"],
        StandardOutPath="$HOME/Library/Logs/home.log",
        RunAtLoad=True,
    )
    host.request("gui_login", uid=USER_UID)

    assert wait_until(lambda: host.service("com.test.home")["last_exit"] == 78)
    printed = host.launchctl("print", f"gui/{USER_UID}/com.test.home").stdout
    assert "last exit code = 78: EX_CONFIG" in printed
    assert not (host.root / "Users/edge_t/Library/Logs/home.log").exists()


def test_kickstart_k_restarts_the_process_without_rereading_the_plist(host):
    out = host.logs / "version.log"
    host.request("gui_login", uid=USER_UID)
    keys = dict(StandardOutPath=str(out), RunAtLoad=True)
    path = host.plist("com.test.kick", ["/bin/sh", "-c", "echo v1; exec sleep 60"], **keys)
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0
    first = wait_until(lambda: host.service("com.test.kick")["pid"])
    host.plist("com.test.kick", ["/bin/sh", "-c", "echo v2; exec sleep 60"], **keys)

    result = host.launchctl("kickstart", "-k", f"gui/{USER_UID}/com.test.kick")

    assert result.returncode == 0
    wait_until(lambda: host.service("com.test.kick")["pid"] not in (None, first))
    wait_until(lambda: len(out.read_text().split()) == 2)
    assert out.read_text().split() == ["v1", "v1"]


@pytest.mark.parametrize("name", ["KILL", "SIGKILL", "9"])
def test_kill_signals_the_job_and_keepalive_starts_it_again(host, name):
    host.plist("com.test.kill", ["/bin/sleep", "60"], KeepAlive=True, ThrottleInterval=1)
    host.request("gui_login", uid=USER_UID)
    first = wait_until(lambda: host.service("com.test.kill")["pid"])

    result = host.launchctl("kill", name, f"gui/{USER_UID}/com.test.kill")

    assert result.returncode == 0, result.stderr
    again = wait_until(lambda: host.service("com.test.kill")["pid"] not in (None, first))
    assert again
    printed = host.launchctl("print", f"gui/{USER_UID}/com.test.kill").stdout
    assert "last terminating signal = Killed: 9" in printed


def test_kill_refuses_unknown_signals_and_stopped_services(host):
    host.request("gui_login", uid=USER_UID)
    path = host.plist("com.test.idle", ["/bin/sleep", "60"])
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0

    bogus = host.launchctl("kill", "SIGBOGUS", f"gui/{USER_UID}/com.test.idle")
    assert bogus.returncode == 64 and "Unrecognized signal: SIGBOGUS" in bogus.stderr
    idle = host.launchctl("kill", "TERM", f"gui/{USER_UID}/com.test.idle")
    assert idle.returncode == 3 and "No such process" in idle.stderr
    none = host.launchctl("kill", "TERM", f"gui/{USER_UID}/com.test.none")
    assert none.returncode == 113


def test_help_prints_the_usage_and_succeeds(host):
    everything = host.launchctl("help")
    assert everything.returncode == 0 and "kill" in everything.stdout
    one = host.launchctl("help", "kill")
    assert one.returncode == 0
    assert (
        one.stdout.strip() == "Usage: launchctl kill <signal-name|signal-number> <service-target>"
    )


def test_gui_logout_stops_the_jobs_and_removes_the_domain(host):
    host.plist("com.test.session", ["/bin/sleep", "60"], KeepAlive=True, ExitTimeOut=2)
    host.request("gui_login", uid=USER_UID)
    pid = wait_until(lambda: host.service("com.test.session")["pid"])

    host.request("gui_logout", uid=USER_UID)

    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid))
    printed = host.launchctl("print", f"gui/{USER_UID}")
    assert printed.returncode == 113
    assert f"Could not find domain for user gui: {USER_UID}" in printed.stderr
    state = (host.root / "private/var/db/edge-lab/state.json").read_text()
    assert '"gui_sessions": []' in state


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_only_root_acts_on_another_users_domain(host):
    host.request("gui_login", uid=USER_UID)
    path = host.plist("com.test.perm", ["/bin/sleep", "30"])

    result = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path), uid=OTHER_UID)
    assert result.returncode == 1
    assert "Bootstrap failed: 1: Operation not permitted" in result.stderr

    own = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path), uid=USER_UID)
    assert own.returncode == 0, own.stderr
    kick = host.launchctl("kickstart", f"gui/{USER_UID}/com.test.perm", uid=OTHER_UID)
    assert kick.returncode == 1 and "Operation not permitted" in kick.stderr
    login = launchd.request(host.socket, "gui_login", uid=OTHER_UID)
    assert login["status"] == 0  # root may
    assert host.launchctl("asuser", str(USER_UID), "/bin/true", uid=OTHER_UID).returncode == 1


def test_unknown_services_and_subcommands_get_launchctls_errors(host):
    host.request("gui_login", uid=USER_UID)

    bootout = host.launchctl("bootout", f"gui/{USER_UID}/com.test.none")
    assert bootout.returncode == 3 and "Boot-out failed: 3: No such process" in bootout.stderr
    kick = host.launchctl("kickstart", f"gui/{USER_UID}/com.test.none")
    assert kick.returncode == 113
    for args in (["load", "x.plist"], ["bootstrap"], ["print"], ["bootout", "bogus/1"], []):
        result = host.launchctl(*args)
        assert result.returncode == 64, args
        assert "Usage: launchctl" in result.stderr


def test_bootout_by_plist_path_and_list(host):
    host.request("gui_login", uid=USER_UID)
    path = host.plist("com.test.path", ["/bin/sleep", "60"], RunAtLoad=True)
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0
    pid = wait_until(lambda: host.service("com.test.path")["pid"])

    listing = host.launchctl("list", uid=USER_UID)
    assert listing.returncode == 0 and f"{pid}\t-\tcom.test.path" in listing.stdout

    assert host.launchctl("bootout", f"gui/{USER_UID}", str(path)).returncode == 0
    wait_until(lambda: host.launchctl("print", f"gui/{USER_UID}/com.test.path").returncode == 113)


def test_a_job_ignoring_sigterm_is_killed_after_exit_timeout(host):
    host.request("gui_login", uid=USER_UID)
    script = "trap '' TERM; while :; do sleep 0.1; done"
    path = host.plist("com.test.stubborn", ["/bin/sh", "-c", script], RunAtLoad=True, ExitTimeOut=1)
    assert host.launchctl("bootstrap", f"gui/{USER_UID}", str(path)).returncode == 0
    wait_until(lambda: host.service("com.test.stubborn")["pid"])
    time.sleep(0.3)  # let the shell install its trap

    started = time.monotonic()
    assert host.launchctl("bootout", f"gui/{USER_UID}/com.test.stubborn").returncode == 0
    wait_until(lambda: host.service("com.test.stubborn") is None, timeout=5)

    assert 0.9 <= time.monotonic() - started < 4


def test_keepalive_successful_exit_false_restarts_only_failures(host):
    runs = host.logs / "runs"
    # Fails on its first run, succeeds on the second: launchd restarts it once.
    script = f"echo run >> {runs}; [ $(wc -l < {runs}) -ge 2 ]"
    host.plist(
        "com.test.retry",
        ["/bin/sh", "-c", script],
        KeepAlive={"SuccessfulExit": False},
        ThrottleInterval=1,
    )
    host.request("gui_login", uid=USER_UID)

    wait_until(lambda: host.service("com.test.retry")["last_exit"] == 0)
    time.sleep(1.5)
    service = host.service("com.test.retry")
    assert service["runs"] == 2 and service["state"] == "not running"


def test_a_plist_key_of_the_wrong_type_is_refused(host):
    host.request("gui_login", uid=USER_UID)
    path = host.plist("com.test.types", ["/bin/sleep", "1"], ThrottleInterval="ten")

    result = host.launchctl("bootstrap", f"gui/{USER_UID}", str(path))

    assert result.returncode == 5
    assert "ThrottleInterval must be an integer" in result.stderr
