"""archety.edge.macos_user, mac_facts and launchd_job against the lab's stand-ins for macOS's
commands: real processes reading and writing a simulated Mac's files under a temporary root,
and the lab's launchd really supervising the jobs."""

import os
import pathlib
import plistlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from ansible_collections.archety.edge.plugins.modules import launchd_job, mac_facts, macos_user
from module_support import REPO_ROOT, run_module

LAB = os.path.join(REPO_ROOT, "lab")
STANDINS = os.path.join(LAB, "edge_lab", "standins")
TOOLS = {
    "sysadminctl": "sysadminctl",
    "dscl": "dscl",
    "createhomedir": "createhomedir",
    "dseditgroup": "dseditgroup",
    "sw_vers": "sw_vers",
    "pmset": "pmset",
    "fdesetup": "fdesetup",
    "xcode-select": "xcode_select",
    "launchctl": "launchctl",
    "plutil": "plutil",
}
pytestmark = pytest.mark.skipif(
    not all(os.path.exists(os.path.join(STANDINS, m + ".py")) for m in TOOLS.values()),
    reason="the lab's stand-ins (lab/edge_lab/standins) are not in this checkout",
)

# A fresh simulated Mac: macOS's groups and the admin user, as the lab's hosts have them.
PASSWD = (
    "root:x:0:0:System Administrator:/var/root:/bin/sh\n"
    "nobody:x:65534:65534:Unprivileged User:/var/empty:/usr/bin/false\n"
    "admin:x:501:20:Admin:/Users/admin:/bin/zsh\n"
)
GROUP = "wheel:x:0:root\neveryone:x:12:\nstaff:x:20:root\nadmin:x:80:root,admin\nnogroup:x:65534:\n"
SHADOW = "root:*:19800:0:99999:7:::\nnobody:*:19800:0:99999:7:::\nadmin:*:19800:0:99999:7:::\n"


@pytest.fixture
def lab_mac(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the stand-ins change account files and chown homes: run as root")
    sys.path.insert(0, LAB)
    try:
        from edge_lab.standins import createhomedir
    finally:
        sys.path.remove(LAB)
    root = tempfile.mkdtemp(prefix="edge-modules-mac-")
    bin_dir = tempfile.mkdtemp(prefix="edge-modules-bin-")
    try:
        os.chmod(root, 0o755)
        os.makedirs(os.path.join(root, "etc"))
        os.makedirs(os.path.join(root, "Users"))
        for name, text in (("passwd", PASSWD), ("group", GROUP), ("shadow", SHADOW)):
            with open(os.path.join(root, "etc", name), "w") as handle:
                handle.write(text)
        os.chmod(os.path.join(root, "etc", "shadow"), 0o600)
        createhomedir.install_user_template(pathlib.Path(root))
        for command, module in TOOLS.items():
            wrapper = os.path.join(bin_dir, command)
            with open(wrapper, "w") as handle:
                handle.write(
                    f'#!/bin/sh\nPYTHONPATH="{LAB}" exec "{sys.executable}" '
                    f'-m edge_lab.standins.{module} "$@"\n'
                )
            os.chmod(wrapper, 0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        monkeypatch.setenv("EDGE_LAB_ROOT", root)
        # The module looks for a home folder at /Users/NAME, which is under root here.
        monkeypatch.setattr(macos_user, "home_exists", lambda path: os.path.isdir(root + path))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(bin_dir, ignore_errors=True)


def run(check_mode=False, **args):
    return run_module(macos_user.main, args, None, check_mode=check_mode, diff=True)


def passwd_entry(root, name):
    with open(os.path.join(root, "etc", "passwd")) as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return line.strip().split(":")
    return None


def test_shard_user_lifecycle_on_the_lab_stand_ins(lab_mac):
    shard = {"name": "edge_sage_01", "full_name": "Edge sage-01", "password": "lab pass 1"}

    preview = run(check_mode=True, **shard)
    assert preview["changed"] is True
    assert passwd_entry(lab_mac, "edge_sage_01") is None

    created = run(**shard)
    assert not created.failed, created.get("msg")
    assert created["changed"] is True
    user = created["user"]
    assert user["name"] == "edge_sage_01"
    assert user["home"] == "/Users/edge_sage_01"
    assert user["shell"] == "/bin/zsh"
    assert user["hidden"] is True and user["admin"] is False
    entry = passwd_entry(lab_mac, "edge_sage_01")
    assert entry is not None and int(entry[2]) == user["uid"]
    home = os.path.join(lab_mac, "Users", "edge_sage_01")
    assert os.path.isdir(os.path.join(home, "Library")), "home populated from the template"

    again = run(**shard)
    assert again["changed"] is False, again["commands"]

    promoted = run(admin=True, **shard)
    assert promoted["changed"] is True and promoted["user"]["admin"] is True
    demoted = run(**shard)
    assert demoted["changed"] is True and demoted["user"]["admin"] is False

    removed = run(name="edge_sage_01", state="absent")
    assert removed["changed"] is True
    assert passwd_entry(lab_mac, "edge_sage_01") is None
    assert os.path.isdir(home), "home kept without remove_home"
    assert run(name="edge_sage_01", state="absent")["changed"] is False


def test_mac_facts_of_a_fresh_lab_mac(lab_mac):
    run(name="edge_sage_01", password="lab pass 1")
    result = run_module(mac_facts.main, {"users": ["edge_sage_01", "edge_sage_09"]}, None)
    assert not result.failed, result.get("msg")
    edge_mac = result["ansible_facts"]["edge_mac"]
    assert edge_mac["macos"] == {"product_version": "14.6.1", "build_version": "23G93"}
    assert edge_mac["pmset"] == {"sleep": 1, "autorestart": 0}
    assert edge_mac["filevault"] == {"enabled": False}
    user = edge_mac["users"]["edge_sage_01"]
    assert user["exists"] is True and user["uid"] >= 501
    assert user["gui_session"] is False, "nobody logged in at the lab's login window"
    assert edge_mac["users"]["edge_sage_09"]["exists"] is False
    assert any("system sleep is on" in w for w in edge_mac["warnings"])
    assert any("autorestart is off" in w for w in edge_mac["warnings"])


# The test's own interpreter may live where nobody cannot read it (a pyenv under /root);
# the stand-ins need only the standard library and the lab package.
NOBODY_PYTHON = "/usr/bin/python3"


@pytest.fixture
def lab_for_nobody():
    """The lab package where nobody can import it, whatever the checkout's folder allows."""
    sys.path.insert(0, LAB)
    try:
        from edge_lab.layout import package_for_every_user
    finally:
        sys.path.remove(LAB)
    folder = package_for_every_user()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(lab_package, *commands):
    """Make the stand-ins of `commands` run as nobody, as they would without become."""
    bin_dir = os.environ["PATH"].split(":")[0]
    for command in commands:
        wrapper = os.path.join(bin_dir, command)
        with open(wrapper, "w") as handle:
            handle.write(
                f'#!/bin/sh\nPYTHONPATH="{lab_package}" exec setpriv --reuid=65534 --regid=65534 '
                f'--clear-groups {NOBODY_PYTHON} -m edge_lab.standins.{TOOLS[command]} "$@"\n'
            )


SHARD = {"name": "edge_sage_01", "full_name": "Edge sage-01", "password": "lab pass 1"}


def test_uid_in_use_on_the_stand_ins_is_named_and_nothing_is_made(lab_mac):
    result = run(uid=501, **SHARD)
    assert result.failed
    assert result["msg"] == (
        "sysadminctl did not create the user edge_sage_01: ### Error: UID 501 is already in use "
        "by admin. Give a free uid, or leave uid out and macOS picks one."
    )
    assert passwd_entry(lab_mac, "edge_sage_01") is None
    assert not os.path.exists(os.path.join(lab_mac, "Users", "edge_sage_01"))


@pytest.mark.skipif(
    shutil.which("setpriv") is None or not os.access(NOBODY_PYTHON, os.X_OK),
    reason=f"setpriv (util-linux) or {NOBODY_PYTHON} is missing",
)
def test_without_root_the_stand_ins_refuse_and_the_module_says_to_become_root(
    lab_mac, lab_for_nobody
):
    run(**SHARD)
    as_nobody(lab_for_nobody, "sysadminctl", "dscl", "createhomedir", "dseditgroup")

    created = run(name="edge_sage_02", password="lab pass 2")
    assert created.failed
    assert created["msg"] == (
        "sysadminctl did not create the user edge_sage_02: ### Error:-14120 "
        "(eDSPermissionError): run sysadminctl as root. Run the task as root (become: true)."
    )
    assert passwd_entry(lab_mac, "edge_sage_02") is None

    changed = run(**dict(SHARD, hidden=False))
    assert changed.failed
    assert changed["msg"].startswith("setting IsHidden of edge_sage_01 failed (exit 40): ")
    assert "eDSPermissionError" in changed["msg"]
    assert changed["msg"].endswith("Run the task as root (become: true).")


def test_createhomedir_without_the_user_template_then_a_rerun_completes_the_user(lab_mac):
    template = os.path.join(lab_mac, "System", "Library", "User Template")
    shutil.rmtree(template)

    result = run(**SHARD)
    assert result.failed
    assert result["msg"] == (
        "createhomedir for edge_sage_01 failed (exit 1): createhomedir: the user template "
        "/System/Library/User Template/English.lproj is missing on this host: restore it, then "
        "run createhomedir again. The user edge_sage_01 exists without its home folder: once "
        "the cause is fixed, run the task again and it makes the folder."
    )
    assert passwd_entry(lab_mac, "edge_sage_01") is not None
    home = os.path.join(lab_mac, "Users", "edge_sage_01")
    assert not os.path.exists(home)

    sys.path.insert(0, LAB)
    try:
        from edge_lab.standins import createhomedir
    finally:
        sys.path.remove(LAB)
    createhomedir.install_user_template(pathlib.Path(lab_mac))
    resumed = run(**SHARD)
    assert not resumed.failed, resumed["msg"]
    assert resumed["changed"] is True
    assert os.path.isdir(os.path.join(home, "Library"))
    assert resumed["user"]["hidden"] is True
    assert run(**SHARD)["changed"] is False


SHARD_UID = 60123
LABEL = "com.archety.edge.relay.sage-01"


class LabLaunchd:
    """The lab's launchd on a temporary host root, with launchctl and plutil on PATH."""

    def __init__(self, root, bin_dir):
        self.root = pathlib.Path(root)
        self.socket = self.root / "launchd.sock"
        self.agents = self.root / "Users/edge_sage_01/Library/LaunchAgents"
        self.agents.mkdir(parents=True)
        (self.root / "etc").mkdir()
        (self.root / "etc/passwd").write_text(
            "root:x:0:0:System Administrator:/var/root:/bin/sh\n"
            f"edge_sage_01:x:{SHARD_UID}:20:Edge sage-01:/Users/edge_sage_01:/bin/sh\n"
        )
        (self.root / "etc/group").write_text("wheel:x:0:root\nstaff:x:20:root\n")
        self.env = dict(
            os.environ,
            EDGE_LAB_ROOT=str(self.root),
            EDGE_LAB_LAUNCHD_SOCKET=str(self.socket),
            PYTHONPATH=LAB,
        )
        for command in ("launchctl", "plutil"):
            wrapper = os.path.join(bin_dir, command)
            with open(wrapper, "w") as handle:
                handle.write(
                    f'#!/bin/sh\nexport EDGE_LAB_ROOT="{self.root}" PYTHONPATH="{LAB}"\n'
                    f'export EDGE_LAB_LAUNCHD_SOCKET="{self.socket}"\n'
                    f'exec "{sys.executable}" -m edge_lab.standins.{command} "$@"\n'
                )
            os.chmod(wrapper, 0o755)
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "edge_lab.launchd", "--socket", str(self.socket)],
            env=self.env,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "the lab's launchd did not start within 10 s"
            time.sleep(0.05)

    def request(self, op, **args):
        sys.path.insert(0, LAB)
        try:
            from edge_lab import launchd
        finally:
            sys.path.remove(LAB)
        return launchd.request(self.socket, op, **args)

    def plist(self, arguments, owner=0, **keys):
        path = self.agents / f"{LABEL}.plist"
        with open(path, "wb") as handle:
            plistlib.dump({"Label": LABEL, "ProgramArguments": arguments, **keys}, handle)
        os.chown(path, owner, 0)
        os.chmod(path, 0o644)
        return str(path)

    def stop(self):
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()


@pytest.fixture
def lab_launchd(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the lab's launchd starts jobs as other users: run as root")
    root = tempfile.mkdtemp(prefix="edge-modules-launchd-", dir="/tmp")
    os.chmod(root, 0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    lab = LabLaunchd(root, str(bin_dir))
    lab.state_dir = str(tmp_path / "state")
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def job(lab, check_mode=False, **args):
    args = dict({"label": LABEL, "uid": SHARD_UID, "state_dir": lab.state_dir}, **args)
    return run_module(launchd_job.main, args, None, check_mode=check_mode, diff=True)


def test_relay_job_on_the_lab_launchd_from_no_session_to_booted_out(lab_launchd):
    plist = lab_launchd.plist(["/bin/sleep", "60"], KeepAlive=True)

    refused = job(lab_launchd, plist=plist, wait_timeout=5)
    assert refused.failed
    assert refused["msg"] == (
        f"gui/{SHARD_UID} does not exist: the user with uid {SHARD_UID} has no GUI login "
        f"session on this Mac. Log the user with uid {SHARD_UID} in at the login window (fast "
        "user switching keeps it logged in), then run again."
    )

    lab_launchd.request("gui_login", uid=SHARD_UID)
    started = job(lab_launchd, plist=plist, wait_timeout=5)
    assert not started.failed, started["msg"]
    assert started["changed"] is True and started["state"] == "running" and started["pid"]
    assert job(lab_launchd, plist=plist, wait_timeout=5)["changed"] is False

    plist = lab_launchd.plist(["/bin/sleep", "61"], KeepAlive=True)
    reloaded = job(lab_launchd, plist=plist, wait_timeout=10)
    assert not reloaded.failed, reloaded["msg"]
    assert reloaded["changed"] is True and reloaded["pid"] != started["pid"]

    gone = job(lab_launchd, state="booted_out", wait_timeout=10)
    assert not gone.failed, gone["msg"]
    assert gone["changed"] is True and gone["state"] == "not loaded"
    assert job(lab_launchd, state="booted_out")["changed"] is False


def test_plist_owned_by_another_user_is_refused_by_the_lab_launchd(lab_launchd):
    lab_launchd.request("gui_login", uid=SHARD_UID)
    plist = lab_launchd.plist(["/bin/sleep", "60"], owner=65534, KeepAlive=True)
    result = job(lab_launchd, plist=plist, wait_timeout=5)
    assert result.failed
    assert result["msg"] == (
        f"launchctl bootstrap gui/{SHARD_UID} {plist} failed (exit 122): {plist}: Path had bad "
        "ownership/permissions Bootstrap failed: 122: Path had bad ownership/permissions. "
        f"launchd refused {plist} for its owner or permissions: make it owned by root:wheel "
        "(or the user) with mode 0644."
    )


def test_job_that_exits_at_once_reports_its_exit_code_from_the_lab_launchd(lab_launchd):
    lab_launchd.request("gui_login", uid=SHARD_UID)
    plist = lab_launchd.plist(["/bin/sh", "-c", "exit 3"], KeepAlive=True, ThrottleInterval=10)
    result = job(lab_launchd, plist=plist, wait_timeout=1.5)
    assert result.failed
    assert result["msg"].startswith(
        f"gui/{SHARD_UID}/{LABEL} did not reach state running within 1.5 s (state = "
    )
    assert "last exit code = 3)" in result["msg"]
