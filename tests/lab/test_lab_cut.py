"""edge-lab cut and restore: a host that stops answering, and comes back where it stopped.

Needs root. Runs a one-host lab of its own (127.0.83.N, backend port 18883, its own folder), so
it never meets a lab started by hand or by other tests.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

LAB_DIR = Path("/tmp/edge-lab-tests/cut/lab")  # kept between runs: the wheelhouse is reused
EDGE_LAB = [sys.executable, "-m", "edge_lab.cli"]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(
        EDGE_LAB_DIR=str(LAB_DIR),
        EDGE_LAB_INVENTORY=str(tmp_path_factory.mktemp("inventory")),
        EDGE_LAB_NET="127.0.83",
        EDGE_LAB_BACKEND_PORT="18883",
    )
    edge_lab(env, "down", check=False)
    subprocess.run(["rm", "-rf", str(LAB_DIR / "hosts")], check=True)
    try:
        edge_lab(env, "up", "--hosts", "1")
        yield env
    finally:
        edge_lab(env, "down", check=False)
        subprocess.run(["rm", "-rf", str(LAB_DIR / "hosts")], check=False)


def edge_lab(env, *args, check=True):
    result = subprocess.run(
        EDGE_LAB + list(args), env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if check and result.returncode != 0:
        pytest.fail(f"edge-lab {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


def ssh(command, timeout=3):
    """A fresh SSH session, as Ansible opens one, with a short handshake timeout."""
    argv = ["ssh", "-F", str(LAB_DIR / "ssh_config"), "-o", "BatchMode=yes"]
    argv += ["-o", f"ConnectTimeout={timeout}", "-o", "ControlMaster=no", "mini-01", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)


def init_pid():
    return json.loads((LAB_DIR / "hosts/mini-01/run.json").read_text())["init_pid"]


def states_in_host():
    """Scheduler state letter of every process in mini-01's PID namespace."""
    namespace = os.readlink(f"/proc/{init_pid()}/ns/pid")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            found[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
    return found


def test_cut_host_stops_answering_and_restore_brings_it_back(lab_env):
    assert ssh("echo up").stdout.strip() == "up"

    cut = edge_lab(lab_env, "cut", "mini-01")
    assert "cut off" in cut.stdout
    states = states_in_host()
    assert states and all(state in ("T", "t", "Z") for state in states.values()), states

    started = time.monotonic()
    lost = ssh("echo up")
    assert lost.returncode == 255, lost
    assert time.monotonic() - started < 10
    assert "cut off" in edge_lab(lab_env, "status").stdout

    before = set(states)
    restored = edge_lab(lab_env, "restore", "mini-01")
    assert "restored" in restored.stdout
    assert ssh("echo up").stdout.strip() == "up"
    after = states_in_host()
    # The host's daemons (its init, sshd and launchd, the first processes it started) carry
    # on: nothing was restarted. Per-connection sshd children may have ended meanwhile.
    assert set(sorted(before)[:3]) <= set(after)
    assert all(after[pid] not in ("T", "t") for pid in before if pid in after)
    assert "was not cut off" in edge_lab(lab_env, "restore", "mini-01").stdout


# Stops itself once after it is continued, as sudo does when it learns that the command it
# runs was stopped (it mirrors the stop), then leaves a mark when it is running again.
STOPS_AGAIN = """
import os, signal, time
continued = []
signal.signal(signal.SIGCONT, lambda *_: continued.append(1))
while not continued:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGSTOP)
open("/tmp/stops-again.done", "w").write("done")
"""


def test_restore_continues_a_process_that_stops_itself_again(lab_env):
    command = f"rm -f /tmp/stops-again.done; nohup python3 -c '{STOPS_AGAIN}' >/dev/null 2>&1 &"
    assert ssh(command).returncode == 0
    time.sleep(0.5)
    edge_lab(lab_env, "cut", "mini-01")
    edge_lab(lab_env, "restore", "mini-01")
    deadline = time.monotonic() + 10
    while ssh("cat /tmp/stops-again.done").stdout.strip() != "done":
        stopped = {pid: s for pid, s in states_in_host().items() if s in ("T", "t")}
        assert time.monotonic() < deadline, f"still stopped after restore: {stopped}"
        time.sleep(0.2)


def test_down_ends_a_cut_host_at_once(lab_env):
    edge_lab(lab_env, "cut", "mini-01")
    started = time.monotonic()
    edge_lab(lab_env, "down")
    assert time.monotonic() - started < 8
    assert "mini-01" in edge_lab(lab_env, "status").stdout
    assert ssh("echo up").returncode == 255


def test_cut_of_an_unknown_host_is_a_sentence(lab_env):
    result = edge_lab(lab_env, "cut", "mini-07", check=False)
    assert result.returncode == 1
    assert "unknown host 'mini-07'" in result.stderr
