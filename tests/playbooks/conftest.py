"""A fresh lab for the playbook tests, brought up once and always brought down."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

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


def lab_env() -> dict[str, str]:
    return dict(os.environ, **LAB_ENV, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")


class Lab:
    """Runs lab commands and playbooks, and reads what they left behind."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir

    def edge_lab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "edge-lab"), *args],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=300,
            check=True,
            env=lab_env(),
        )

    def playbook(self, *args: str, check_mode: bool = False, **extra: str) -> Run:
        argv = [str(BIN / "ansible-playbook"), "-i", str(INVENTORY), "playbooks/add_shard.yml"]
        for key, value in extra.items():
            argv += ["-e", f"{key}={value}"]
        if check_mode:
            argv.append("--check")
        argv += list(args)
        proc = subprocess.run(
            argv,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=PLAYBOOK_TIMEOUT_S,
            env=lab_env(),
        )
        return Run(proc.returncode, proc.stdout)

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


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (namespaces, sshd, users)")
    edge_lab = str(BIN / "edge-lab")
    subprocess.run([edge_lab, "down", "--purge"], cwd=REPO, timeout=120, env=lab_env())
    subprocess.run(
        [edge_lab, "up", "--hosts", "1"], cwd=REPO, timeout=600, check=True, env=lab_env()
    )
    try:
        yield Lab(LAB_DIR)
    finally:
        subprocess.run([edge_lab, "down"], cwd=REPO, timeout=120, env=lab_env())
