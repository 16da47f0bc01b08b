"""Shared set-up for the stand-in tests: a temporary host root and a way to run a stand-in
as the command it replaces (its own process, so exit status and streams are real)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "lab"
sys.path.insert(0, str(LAB))

from edge_lab.standins import createhomedir  # noqa: E402

PASSWD = """\
root:x:0:0:System Administrator:/var/root:/bin/sh
daemon:x:1:1:System Services:/var/root:/usr/bin/false
nobody:x:65534:65534:Unprivileged User:/var/empty:/usr/bin/false
admin:x:501:20:Admin:/Users/admin:/bin/zsh
"""
GROUP = """\
wheel:x:0:root
daemon:x:1:root
everyone:x:12:
staff:x:20:root
admin:x:80:root,admin
nogroup:x:65534:
"""
SHADOW = """\
root:*:19800:0:99999:7:::
daemon:*:19800:0:99999:7:::
nobody:*:19800:0:99999:7:::
admin:*:19800:0:99999:7:::
"""

# Every stand-in run is bounded: a hung one fails its test instead of the suite.
TIMEOUT_S = 30


def make_root() -> Path:
    """A host tree with macOS's groups and the admin user. Made outside pytest's own
    temporary folder (root-only) so that `nobody` can read it too."""
    root = Path(tempfile.mkdtemp(prefix="edge-lab-standins-"))
    os.chmod(root, 0o755)
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "shadow").write_text(SHADOW)
    os.chmod(etc / "shadow", 0o600)
    (root / "Users").mkdir()
    createhomedir.install_user_template(root)
    return root


@contextlib.contextmanager
def standin_root():
    """A fresh host root, removed afterwards (each test file's host_root fixture)."""
    root = make_root()
    try:
        yield root
    finally:
        shutil.rmtree(root)


def run_standin(root, module, *args, stdin=None, as_nobody=False):
    env = {
        "PATH": "/usr/bin:/bin",
        "EDGE_LAB_ROOT": str(root),
        "PYTHONPATH": str(LAB),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, "-m", f"edge_lab.standins.{module}", *args]
    if as_nobody:
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
        check=False,
    )


def passwd_lines(root) -> list:
    return (Path(root) / "etc" / "passwd").read_text().splitlines()


def group_members(root, name) -> list:
    for line in (Path(root) / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return [m for m in fields[3].split(",") if m]
    raise AssertionError(f"group {name} missing")


def shadow_hash(root, name) -> str:
    for line in (Path(root) / "etc" / "shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1]
    raise AssertionError(f"shadow line for {name} missing")


def write_state(root, **state):
    """The host's state file, as the lab's person-only commands leave it."""
    path = Path(root) / "private/var/db/edge-lab/state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))


def read_state(root):
    return json.loads((Path(root) / "private/var/db/edge-lab/state.json").read_text())
