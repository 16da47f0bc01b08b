"""Where the lab keeps things, and the names and addresses of its hosts."""

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON39 = Path("/root/.pyenv/versions/3.9.18/bin/python3.9")
PYENV_ROOT = Path("/root/.pyenv")
HOST_NAME = re.compile(r"^mini-(\d{2})$")
CANARY_HANDLE = "+15550009999"
HEALTH_PORT_BASE = 47000


class LabError(Exception):
    """A problem the operator can fix; the message says what and how."""


class BadInput(LabError):
    """A command's arguments are wrong and nothing was done; ``edge-lab`` exits with 2."""


def lab_dir():
    return Path(os.environ.get("EDGE_LAB_DIR") or REPO_ROOT / ".lab").absolute()


def inventory_dir():
    return Path(os.environ.get("EDGE_LAB_INVENTORY") or REPO_ROOT / "inventories/lab").absolute()


def network():
    """The first three octets of the hosts' addresses (``127.0.1`` unless set for tests)."""
    value = os.environ.get("EDGE_LAB_NET", "127.0.1")
    if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}", value) or any(
        int(part) > 255 for part in value.split(".")
    ):
        raise LabError(
            f"EDGE_LAB_NET '{value}' is not the start of a loopback address such as 127.0.1"
        )
    return value


def backend_port():
    value = os.environ.get("EDGE_LAB_BACKEND_PORT", "8787")
    if not value.isdigit() or not 1024 <= int(value) <= 65535:
        raise LabError(f"EDGE_LAB_BACKEND_PORT '{value}' is not a port number from 1024 to 65535")
    return int(value)


def health_port_base():
    """First health port of the hosts' relays: host N allocates from base + 100 * N.

    All labs share the machine's loopback, so a lab on another network than the default gets
    its own range of 1,500 ports (15 hosts) from its third octet: a relay of one lab must never
    answer the health check of another's.
    """
    net = network()
    default = HEALTH_PORT_BASE if net == "127.0.1" else 20000 + int(net.split(".")[2]) % 23 * 1500
    value = os.environ.get("EDGE_LAB_HEALTH_PORT_BASE", str(default))
    if not value.isdigit() or not 1024 <= int(value) <= 55000:
        raise LabError(
            f"EDGE_LAB_HEALTH_PORT_BASE '{value}' is not a port number from 1024 to 55000"
        )
    return int(value)


def venv_python():
    """The lab's own interpreter, used for the stand-ins and daemons inside each host."""
    return Path(sys.executable)


@dataclass(frozen=True)
class Host:
    index: int
    lab: Path

    @property
    def name(self):
        return f"mini-{self.index:02d}"

    @property
    def address(self):
        return f"{network()}.{self.index}"

    @property
    def dir(self):
        return self.lab / "hosts" / self.name

    @property
    def record(self):
        """Written by ``up`` once the host runs: the pids that let ``down`` find it."""
        return self.dir / "run.json"

    @property
    def log(self):
        return self.dir / "host.log"

    @property
    def launchd_socket(self):
        return self.dir / "private/var/run/edge-lab/launchd.sock"


def host_by_name(name, lab=None):
    """The host called ``name``; refuses a name that is malformed or was never made."""
    lab = lab or lab_dir()
    match = HOST_NAME.match(name)
    if not match or int(match.group(1)) == 0:
        raise LabError(f"host '{name}' is not a lab host name (mini-01, mini-02, ...)")
    host = Host(int(match.group(1)), lab)
    if not (host.dir / "etc/passwd").exists():
        known = ", ".join(h.name for h in known_hosts(lab)) or "none; run edge-lab up"
        raise LabError(f"unknown host '{name}' (known hosts: {known})")
    return host


def known_hosts(lab=None):
    lab = lab or lab_dir()
    found = []
    for entry in sorted((lab / "hosts").glob("mini-*")):
        match = HOST_NAME.match(entry.name)
        if match and (entry / "etc/passwd").exists():
            found.append(Host(int(match.group(1)), lab))
    return found


def package_for_every_user() -> Path:
    """A copy of the edge_lab package that any user can import, as a folder for PYTHONPATH.

    A stand-in run under a user's own uid outside a lab host (the tests do so) cannot import
    the package from a checkout that only its owner may enter (a clone in a 0700 folder). The
    caller removes the folder when done.
    """
    folder = Path(tempfile.mkdtemp(prefix="edge-lab-package-"))
    folder.chmod(0o755)
    shutil.copytree(
        Path(__file__).resolve().parent,
        folder / "edge_lab",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for path in [folder / "edge_lab", *(folder / "edge_lab").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder
