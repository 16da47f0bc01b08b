"""The person-only steps of one host, as the stand-ins and the lab commands share them.

The file lives at ``<root>/private/var/db/edge-lab/state.json`` (``root`` is ``/`` inside a
host, or the host's folder under ``.lab/hosts`` from outside). Writers hold an exclusive lock
on a sibling lock file and replace the file atomically, so a reader never sees half a write.
"""

import copy
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

STATE_RELPATH = "private/var/db/edge-lab/state.json"

# A fresh lab Mac: Command Line Tools present (Ansible needs /usr/bin/python3), nobody
# logged in at the GUI, no iMessage account, no privacy grants, macOS's power defaults.
DEFAULT_STATE = {
    "gui_sessions": [],
    "imessage": {},
    "fda": False,
    "automation": [],
    "clt": True,
    "pmset": {"sleep": 1, "autorestart": 0},
    "filevault": False,
    "macos": {"ProductVersion": "14.6.1", "BuildVersion": "23G93"},
}


def state_path(root="/"):
    return Path(root) / STATE_RELPATH


def default_state():
    return copy.deepcopy(DEFAULT_STATE)


def load(root="/"):
    """Return the host's state; keys missing from the file take their default."""
    state = default_state()
    try:
        with open(state_path(root), encoding="utf-8") as handle:
            stored = json.load(handle)
    except FileNotFoundError:
        return state
    state.update(stored)
    return state


@contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_json_atomic(path, state):
    """Replaces the JSON file at `path` in one step (mode 0644), never leaving it half-written."""
    fd, tmp = tempfile.mkstemp(prefix=".state.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update(root, fn):
    """Apply ``fn`` to the state under the lock and store the result.

    ``fn`` may change the dictionary it is given in place or return a new one. Returns the
    state as stored.
    """
    path = state_path(root)
    with _locked(path):
        state = load(root)
        result = fn(state)
        if result is not None:
            state = result
        write_json_atomic(path, state)
        return state
