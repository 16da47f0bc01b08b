"""A fresh lab for the playbook tests, brought up once and always brought down."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK_TIMEOUT_S = 600

# A lab of its own (folder, addresses, backend port, inventory), so these tests neither see nor
# disturb a lab started by hand with `make lab-up` or `make demo`.
TEST_LAB = Path("/tmp/edge-lab-tests/playbooks")
LAB_ENV = {
    "EDGE_LAB_DIR": str(TEST_LAB / "lab"),
    "EDGE_LAB_INVENTORY": str(TEST_LAB / "inventory"),
    "EDGE_LAB_NET": "127.0.78",
    "EDGE_LAB_BACKEND_PORT": "18878",
}
LAB_DIR = TEST_LAB / "lab"
INVENTORY = TEST_LAB / "inventory" / "hosts.yml"


def lab_env(values: dict[str, str] = LAB_ENV) -> dict[str, str]:
    return dict(os.environ, **values, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")


class Lab:
    """Runs lab commands and playbooks, and reads what they left behind."""

    def __init__(self, lab_dir: Path, values: dict[str, str] = LAB_ENV) -> None:
        self.dir = lab_dir
        self.values = values
        self.inventory = Path(values["EDGE_LAB_INVENTORY"]) / "hosts.yml"

    def edge_lab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "edge-lab"), *args],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=300,
            check=True,
            env=lab_env(self.values),
        )

    def playbook(
        self,
        *args: str,
        check_mode: bool = False,
        playbook: str = "add_shard.yml",
        at_task: tuple[str, Callable[[], object]] | None = None,
        **extra: str,
    ) -> Run:
        """Run a playbook; `at_task` = (task name, action) calls the action once, as soon as
        the play announces that task."""
        argv = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(self.inventory),
            str(Path("playbooks") / playbook),
        ]
        for key, value in extra.items():
            argv += ["-e", f"{key}={value}"]
        if check_mode:
            argv.append("--check")
        argv += list(args)
        task, action = at_task or (None, None)
        lines = []
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(lab_env(self.values), PYTHONUNBUFFERED="1"),
        )
        timer = threading.Timer(PLAYBOOK_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if action and line.startswith(f"TASK [{task}]"):
                    action()
                    action = None
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = "".join(lines)
        assert task is None or action is None, f"the play never reached {task!r}:\n{output}"
        return Run(proc.returncode, output)

    def shard_rows(self) -> list[tuple]:
        with sqlite3.connect(self.dir / "backend.db") as db:
            return db.execute(
                "SELECT shard_id, phone_number, host, state FROM persona_shards ORDER BY shard_id"
            ).fetchall()

    def sql(self, statement: str, *params) -> list[tuple]:
        with sqlite3.connect(self.dir / "backend.db") as db:
            return db.execute(statement, params).fetchall()

    def host_path(self, host: str, path: str) -> Path:
        return self.dir / "hosts" / host / path.lstrip("/")

    def has_user(self, host: str, name: str) -> bool:
        passwd = self.host_path(host, "/etc/passwd").read_text()
        return any(line.split(":")[0] == name for line in passwd.splitlines())


class Run:
    def __init__(self, rc: int, output: str) -> None:
        self.rc = rc
        self.output = output

    def recap(self, host: str) -> dict[str, int]:
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        assert match, f"no PLAY RECAP line for {host}:\n{self.output}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@contextlib.contextmanager
def running_lab(values: dict[str, str], hosts: int = 1):
    """A lab brought up fresh with these EDGE_LAB_* values, and always brought down."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (namespaces, sshd, users)")
    edge_lab = str(BIN / "edge-lab")
    env = lab_env(values)
    subprocess.run([edge_lab, "down", "--purge"], cwd=REPO, timeout=120, env=env)
    try:
        subprocess.run(
            [edge_lab, "up", "--hosts", str(hosts)], cwd=REPO, timeout=600, check=True, env=env
        )
        yield Lab(Path(values["EDGE_LAB_DIR"]), values)
    finally:
        subprocess.run([edge_lab, "down"], cwd=REPO, timeout=120, env=env)


@pytest.fixture(scope="session")
def lab():
    with running_lab(LAB_ENV) as started:
        yield started


# The lab of the shard lifecycle tests (fleet_health.yml, remove_shard.yml), beside the others.
# Its relays take health ports from 49100 up, away from the default 47000s of other labs.
LIFECYCLE_ENV = {
    "EDGE_LAB_DIR": "/tmp/edge-lab-tests/lifecycle/lab",
    "EDGE_LAB_INVENTORY": "/tmp/edge-lab-tests/lifecycle/inventory",
    "EDGE_LAB_NET": "127.0.79",
    "EDGE_LAB_BACKEND_PORT": "18879",
    "EDGE_LAB_HEALTH_PORT_BASE": "49000",
}
# A persona of its own keeps the shard's name apart from the shards of other labs.
LIFECYCLE_SHARD = {
    "persona": "lifecycle",
    "shard_number": "1",
    "phone_number": "+15557770001",
    "target_host": "mini-01",
}
LIFECYCLE_USER = "edge_lifecycle_01"


@pytest.fixture(scope="session")
def lifecycle_lab():
    with running_lab(LIFECYCLE_ENV) as started:
        yield started


def relay_wheel_args() -> dict[str, str]:
    """EDGE_TEST_RELAY_WHEEL names a relay wheel to install instead of building one."""
    wheel = os.environ.get("EDGE_TEST_RELAY_WHEEL")
    return {"relay_wheel": wheel} if wheel else {}


def add_serving_shard(lab: Lab, shard: dict[str, str], user: str) -> None:
    """add_shard.yml, the person-only steps, and add_shard.yml again: the shard serves."""
    shard_id = f"{shard['persona']}-{int(shard['shard_number']):02d}"
    if (shard_id, shard["phone_number"], shard["target_host"], "active") in lab.shard_rows():
        return
    lab.playbook(**shard, **relay_wheel_args())
    host = shard["target_host"]
    lab.edge_lab("gui", "login", host, user)
    lab.edge_lab("imessage", "signin", host, user, shard["phone_number"])
    lab.edge_lab("grant", "fda", host)
    lab.edge_lab("grant", "automation", host, user)
    run = lab.playbook(**shard, **relay_wheel_args())
    assert run.rc == 0, run.output
