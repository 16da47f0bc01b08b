"""The lab core end to end: two hosts up, reached over real SSH, human steps, then down.

Needs root (namespaces, mounts, sshd). The lab runs on its own addresses (127.0.77.N), backend
port and folder, so it never meets a lab someone brought up by hand on 127.0.1.N.
"""

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

LAB_DIR = Path("/tmp/edge-lab-tests/lab")  # kept between runs: the wheelhouse is reused
NET = "127.0.77"
EDGE_LAB = [sys.executable, "-m", "edge_lab.cli"]
TIMEOUT_S = 90


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(
        EDGE_LAB_DIR=str(LAB_DIR),
        EDGE_LAB_INVENTORY=str(tmp_path_factory.mktemp("inventory")),
        EDGE_LAB_NET=NET,
        EDGE_LAB_BACKEND_PORT="18877",
    )
    return env


def edge_lab(env, *args, check=True):
    result = subprocess.run(
        EDGE_LAB + list(args), env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if check and result.returncode != 0:
        pytest.fail(f"edge-lab {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def lab(lab_env):
    edge_lab(lab_env, "down", check=False)
    subprocess.run(["rm", "-rf", str(LAB_DIR / "hosts")], check=True)
    try:
        edge_lab(lab_env, "up", "--hosts", "2")
        yield lab_env
    finally:
        edge_lab(lab_env, "down", check=False)
        subprocess.run(["rm", "-rf", str(LAB_DIR / "hosts")], check=False)


def ssh(env, host, command):
    return subprocess.run(
        ["ssh", "-F", str(LAB_DIR / "ssh_config"), "-o", "BatchMode=yes", host, command],
        capture_output=True,
        text=True,
        timeout=30,
    )


def in_host(env, host, *argv):
    return edge_lab(env, "exec", host, *argv, check=False)


def host_dir(name):
    return LAB_DIR / "hosts" / name


def state(name):
    return json.loads((host_dir(name) / "private/var/db/edge-lab/state.json").read_text())


def test_admin_logs_in_over_ssh_and_sudo_needs_no_password(lab):
    for index in (1, 2):
        result = ssh(lab, f"{NET}.{index}", "id -un; hostname; sudo -n true && echo sudo ok")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["admin", f"mini-0{index}", "sudo", "ok"]


def test_the_inventory_keeps_the_shard_users_password_to_its_owner(lab):
    group_vars = Path(lab["EDGE_LAB_INVENTORY"]) / "group_vars/all.yml"
    assert "edge_shard_user_password" in group_vars.read_text()
    assert group_vars.stat().st_mode & 0o777 == 0o600


def test_each_host_has_its_own_users_and_etc(lab):
    made = in_host(lab, "mini-01", "sh", "-c", "touch /Users/Shared/mark /etc/edge-lab-mark")
    assert made.returncode == 0, made.stderr
    assert in_host(lab, "mini-01", "test", "-e", "/etc/edge-lab-mark").returncode == 0
    assert in_host(lab, "mini-02", "test", "-e", "/etc/edge-lab-mark").returncode == 1
    assert in_host(lab, "mini-02", "test", "-e", "/Users/Shared/mark").returncode == 1
    assert not Path("/etc/edge-lab-mark").exists()
    assert (host_dir("mini-01") / "etc/edge-lab-mark").exists()


def test_hosts_have_macos_groups_and_admin(lab):
    staff = in_host(lab, "mini-02", "getent", "group", "staff")
    assert staff.stdout.split(":")[:3] == ["staff", "x", "20"]
    wheel = in_host(lab, "mini-02", "getent", "group", "0")
    assert wheel.stdout.startswith("wheel:x:0:")
    admin = in_host(lab, "mini-02", "id", "admin")
    assert admin.stdout.strip() == "uid=501(admin) gid=20(staff) groups=20(staff),80(admin)"


def test_python3_is_39_for_every_user(lab):
    result = ssh(
        lab, f"{NET}.1", "/usr/bin/python3 -V; /usr/bin/python3 -c 'import os;print(os.getuid())'"
    )
    assert result.returncode == 0, result.stderr
    version, uid = result.stdout.split("\n")[:2]
    assert version.startswith("Python 3.9.")
    assert uid == "501"


def test_wheelhouse_is_visible_read_only(lab):
    listed = in_host(lab, "mini-02", "ls", "/private/var/edge-lab/wheelhouse")
    assert any(name.startswith("aiohttp-") for name in listed.stdout.split())
    write = in_host(lab, "mini-02", "touch", "/private/var/edge-lab/wheelhouse/x")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_stand_ins_sit_where_macos_has_them(lab):
    for path in (
        "/usr/sbin/sysadminctl",
        "/usr/sbin/dseditgroup",
        "/bin/launchctl",
        "/usr/bin/dscl",
        "/usr/bin/osascript",
    ):
        found = in_host(lab, "mini-01", "head", "-n", "4", path)
        assert found.returncode == 0, path
        assert "edge_lab.standins." in found.stdout
    assert not Path("/usr/bin/dscl").exists()


def test_clt_remove_makes_python3_a_stub(lab):
    edge_lab(lab, "clt", "remove", "mini-02")
    try:
        assert state("mini-02")["clt"] is False
        result = ssh(lab, f"{NET}.2", "/usr/bin/python3 -V")
        assert result.returncode == 1
        assert "xcode-select: note: No developer tools were found" in result.stderr
    finally:
        edge_lab(lab, "clt", "install", "mini-02")
    assert ssh(lab, f"{NET}.2", "/usr/bin/python3 -V").stdout.startswith("Python 3.9.")


@pytest.fixture(scope="session")
def persona(lab):
    """A shard's user on mini-01, made with the host's own useradd and the user template."""
    made = in_host(
        lab,
        "mini-01",
        "useradd",
        "-u",
        "602",
        "-g",
        "20",
        "-m",
        "-d",
        "/Users/edge_test_01",
        "-k",
        "/System/Library/User Template/English.lproj",
        "edge_test_01",
    )
    assert made.returncode == 0, made.stderr
    return "edge_test_01"


def tcc_row(database, service):
    with sqlite3.connect(database) as db:
        return db.execute(
            "SELECT client, client_type, auth_value, indirect_object_identifier FROM access"
            " WHERE service = ?",
            (service,),
        ).fetchall()


def test_gui_login_and_logout_reach_state(lab, persona):
    edge_lab(lab, "gui", "login", "mini-01", persona)
    assert 602 in state("mini-01")["gui_sessions"]
    edge_lab(lab, "gui", "logout", "mini-01", persona)
    assert 602 not in state("mini-01")["gui_sessions"]


def test_imessage_and_fda_decide_who_owns_the_messages_folder(lab, persona):
    edge_lab(lab, "imessage", "signin", "mini-01", persona, "+15557770001")
    assert state("mini-01")["imessage"][persona] == "+15557770001"
    messages = host_dir("mini-01") / f"Users/{persona}/Library/Messages"
    assert (messages / "chat.db").stat().st_uid == 602
    folder = messages.stat()
    assert (folder.st_uid, folder.st_gid, folder.st_mode & 0o777) == (0, 0, 0o700)
    unreadable = ssh(lab, f"{NET}.1", f"sudo -n -u {persona} ls /Users/{persona}/Library/Messages")
    assert unreadable.returncode != 0

    system_tcc = host_dir("mini-01") / "Library/Application Support/com.apple.TCC/TCC.db"
    edge_lab(lab, "grant", "fda", "mini-01")
    assert state("mini-01")["fda"] is True
    folder = messages.stat()
    assert (folder.st_uid, folder.st_gid, folder.st_mode & 0o777) == (602, 20, 0o700)
    assert tcc_row(system_tcc, "kTCCServiceSystemPolicyAllFiles") == [
        ("/Library/Developer/CommandLineTools/usr/bin/python3", 1, 2, "UNUSED")
    ]
    readable = ssh(lab, f"{NET}.1", f"sudo -n -u {persona} ls /Users/{persona}/Library/Messages")
    assert "chat.db" in readable.stdout

    edge_lab(lab, "revoke", "fda", "mini-01")
    assert state("mini-01")["fda"] is False
    assert messages.stat().st_uid == 0
    assert tcc_row(system_tcc, "kTCCServiceSystemPolicyAllFiles")[0][2] == 0


def test_automation_grant_writes_the_users_tcc(lab, persona):
    edge_lab(lab, "grant", "automation", "mini-01", persona)
    assert persona in state("mini-01")["automation"]
    user_tcc = host_dir("mini-01") / (
        f"Users/{persona}/Library/Application Support/com.apple.TCC/TCC.db"
    )
    assert user_tcc.stat().st_uid == 602
    assert tcc_row(user_tcc, "kTCCServiceAppleEvents") == [
        ("/Library/Developer/CommandLineTools/usr/bin/python3", 1, 2, "com.apple.MessagesApp")
    ]
    edge_lab(lab, "revoke", "automation", "mini-01", persona)
    assert persona not in state("mini-01")["automation"]
    assert tcc_row(user_tcc, "kTCCServiceAppleEvents")[0][2] == 0


def test_phone_send_lands_in_the_signed_in_accounts_chat_db(lab, persona):
    edge_lab(lab, "imessage", "signin", "mini-01", persona, "+15557770001")
    sent = edge_lab(
        lab, "phone", "send", "--to", "+15557770001", "--from", "+15550001111", "hello from the lab"
    )
    guid = sent.stdout.strip().rsplit(" ", 1)[-1]
    chat_db = host_dir("mini-01") / f"Users/{persona}/Library/Messages/chat.db"
    with sqlite3.connect(chat_db) as db:
        row = db.execute("SELECT text, is_from_me FROM message WHERE guid = ?", (guid,)).fetchone()
    assert row == ("hello from the lab", 0)

    nobody = edge_lab(
        lab, "phone", "send", "--to", "+15557770999", "--from", "+15550001111", "lost", check=False
    )
    assert nobody.returncode == 1
    assert "no lab account is signed in to iMessage as +15557770999" in nobody.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (("gui", "login", "mini-07", "admin"), "unknown host 'mini-07'"),
        (("grant", "fda", "mini-07"), "unknown host 'mini-07'"),
        (("clt", "remove", "laptop"), "host 'laptop' is not a lab host name"),
        (("exec", "mini-09", "true"), "unknown host 'mini-09'"),
        (("gui", "login", "mini-01", "ghost"), "unknown user 'ghost' on mini-01"),
        (("imessage", "signin", "mini-01", "admin", "5550100"), "'5550100' is not E.164"),
        (("grant", "automation", "mini-01"), "automation needs a user"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(lab, args, says):
    before = (host_dir("mini-01") / "private/var/db/edge-lab/state.json").read_bytes()
    result = edge_lab(lab, *args, check=False)
    assert result.returncode == 1
    assert says in result.stderr
    assert (host_dir("mini-01") / "private/var/db/edge-lab/state.json").read_bytes() == before
    assert not host_dir("mini-07").exists()


def test_up_again_leaves_running_hosts_alone(lab):
    before = {name: (host_dir(name) / "run.json").read_text() for name in ("mini-01", "mini-02")}
    again = edge_lab(lab, "up", "--hosts", "2")
    assert "mini-01  127.0.77.1  already up" in again.stdout
    assert {name: (host_dir(name) / "run.json").read_text() for name in before} == before


def test_up_refuses_a_busy_ssh_address_and_starts_nothing(lab):
    squatter = socket.socket()
    squatter.bind((f"{NET}.3", 22))
    squatter.listen()
    try:
        result = edge_lab(lab, "up", "--hosts", "3", check=False)
    finally:
        squatter.close()
    assert result.returncode == 1
    assert f"port 22 on {NET}.3 is already in use" in result.stderr
    assert not (host_dir("mini-03") / "run.json").exists()


def _pid_namespace(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _live_in(namespaces):
    live = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_namespace(entry.name) in namespaces:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                live.append(int(entry.name))
    return live


def test_down_ends_every_process_of_the_lab(lab):
    started = ssh(lab, f"{NET}.2", "nohup sleep 600 >/dev/null 2>&1 & echo $!")
    assert started.returncode == 0
    in_host(lab, "mini-01", "sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    records = [
        json.loads((host_dir(name) / "run.json").read_text()) for name in ("mini-01", "mini-02")
    ]
    namespaces = {record["pid_ns"] for record in records}
    assert len(_live_in(namespaces)) >= 6  # init, sshd, launchd per host, and the sleeps

    edge_lab(lab, "down")
    assert _live_in(namespaces) == []
    for record in records:
        assert not Path(f"/proc/{record['unshare_pid']}/cmdline").exists() or (
            "edge_lab.hostinit" not in Path(f"/proc/{record['unshare_pid']}/cmdline").read_text()
        )
    assert ssh(lab, f"{NET}.1", "true").returncode == 255
    status = edge_lab(lab, "status").stdout
    assert "backend: not running" in status
