"""What the macOS command stand-ins share.

Every stand-in works on the real files of the host it runs in (``/etc/passwd``,
``/etc/group``, ``/etc/shadow``, ``/Users``, ...), or on the same paths under the root
named by ``EDGE_LAB_ROOT`` (the tests use a temporary root). The account files are
changed the way shadow-utils changes them: under the ``/etc/.pwd.lock`` lock that
``lckpwdf(3)`` takes, written to a temporary file beside the original and moved over it,
so a reader never sees half a file and two writers never lose each other's change.

Facts macOS keeps that Linux has no place for live in the host's state file
(``/private/var/db/edge-lab/state.json``) and in one side file per user record
(``/private/var/db/edge-lab/dslocal/<name>.json``), the lab's counterpart of the
per-record plists macOS keeps under ``/var/db/dslocal/nodes/Default/users``.
"""

import contextlib
import ctypes
import ctypes.util
import datetime
import fcntl
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from edge_lab.hoststate import write_json_atomic

# Group ids macOS ships with; the lab's hosts have the same groups.
STAFF_GID = 20
ADMIN_GROUP = "admin"
STAFF_GROUP = "staff"

# First id macOS gives to a user made in System Settings or by sysadminctl.
FIRST_USER_UID = 501

# uid_t -2, macOS's "nobody": what a record created without a UniqueID resolves to.
UNSET_ID = 4294967294

STATE_DEFAULTS = {
    "pmset": {"sleep": 1, "autorestart": 0},
    "filevault": False,
    "clt": True,
    "macos": {"ProductVersion": "14.6.1", "BuildVersion": "23G93"},
}

# sysexits(3) values the directory tools use.
EX_USAGE = 64
EX_NOUSER = 67


class StandinError(Exception):
    """A failure the command reports with ``message`` on stderr and exits with ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


def lab_root() -> Path:
    """The root the stand-in works under: ``$EDGE_LAB_ROOT`` or the host's own ``/``."""
    return Path(os.environ.get("EDGE_LAB_ROOT") or "/")


def under(root: Path, path: str) -> Path:
    """``path`` (absolute, as macOS spells it) inside ``root``."""
    return root / path.lstrip("/")


def is_root() -> bool:
    return os.geteuid() == 0


def run(main_body, argv: Optional[List[str]]) -> int:
    """Run a command body, turning a StandinError into its message and exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main_body(args)
    except StandinError as err:
        if err.message:
            print(err.message, file=sys.stderr)
        return err.code


def nslog(tool: str, message: str) -> None:
    """One line on stderr in the form Foundation's NSLog gives tools such as sysadminctl:
    ``2024-05-01 10:00:00.000 sysadminctl[pid:thread] message``."""
    now = datetime.datetime.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"
    print(f"{stamp} {tool}[{os.getpid()}:{threading.get_native_id():x}] {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Account files


@dataclass
class PasswdEntry:
    name: str
    password: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str

    @classmethod
    def parse(cls, line: str) -> "PasswdEntry":
        name, password, uid, gid, gecos, home, shell = line.split(":")
        return cls(name, password, int(uid), int(gid), gecos, home, shell)

    def line(self) -> str:
        fields = (self.name, self.password, self.uid, self.gid, self.gecos, self.home, self.shell)
        return ":".join(str(f) for f in fields)

    @property
    def real_name(self) -> str:
        # The GECOS field holds the full name first, then office and phone after commas.
        return self.gecos.split(",")[0]


@dataclass
class GroupEntry:
    name: str
    password: str
    gid: int
    members: List[str] = field(default_factory=list)

    @classmethod
    def parse(cls, line: str) -> "GroupEntry":
        name, password, gid, members = line.split(":")
        return cls(name, password, int(gid), [m for m in members.split(",") if m])

    def line(self) -> str:
        return f"{self.name}:{self.password}:{self.gid}:{','.join(self.members)}"


@dataclass
class ShadowEntry:
    name: str
    hash: str
    rest: List[str]

    @classmethod
    def parse(cls, line: str) -> "ShadowEntry":
        name, hashed, *rest = line.split(":")
        return cls(name, hashed, rest)

    @classmethod
    def new(cls, name: str, hashed: str) -> "ShadowEntry":
        days = int(datetime.datetime.now(datetime.timezone.utc).timestamp() // 86400)
        # lastchg, min, max, warn, inactive, expire, reserved: as useradd writes them.
        return cls(name, hashed, [str(days), "0", "99999", "7", "", "", ""])

    def line(self) -> str:
        return ":".join([self.name, self.hash, *self.rest])


def _read_lines(path: Path) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise StandinError(f"{path} is missing: the host's account files are not set up.") from err
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


class Accounts:
    """The host's passwd, group and shadow files, loaded together."""

    def __init__(self, root: Path, with_shadow: bool):
        self.root = root
        self.passwd = [PasswdEntry.parse(x) for x in _read_lines(self.path("passwd"))]
        self.groups = [GroupEntry.parse(x) for x in _read_lines(self.path("group"))]
        self.shadow = (
            [ShadowEntry.parse(x) for x in _read_lines(self.path("shadow"))] if with_shadow else []
        )

    def path(self, name: str) -> Path:
        return under(self.root, f"/etc/{name}")

    def user(self, name: str) -> Optional[PasswdEntry]:
        return next((u for u in self.passwd if u.name == name), None)

    def user_by_uid(self, uid: int) -> Optional[PasswdEntry]:
        return next((u for u in self.passwd if u.uid == uid), None)

    def group(self, name: str) -> Optional[GroupEntry]:
        return next((g for g in self.groups if g.name == name), None)

    def group_by_gid(self, gid: int) -> Optional[GroupEntry]:
        return next((g for g in self.groups if g.gid == gid), None)

    def next_free_uid(self) -> int:
        taken = {u.uid for u in self.passwd}
        uid = FIRST_USER_UID
        while uid in taken:
            uid += 1
        return uid

    def remove_user(self, name: str) -> None:
        self.passwd = [u for u in self.passwd if u.name != name]
        self.shadow = [s for s in self.shadow if s.name != name]
        for group in self.groups:
            group.members = [m for m in group.members if m != name]

    def set_password_hash(self, name: str, hashed: str) -> None:
        for entry in self.shadow:
            if entry.name == name:
                entry.hash = hashed
                return
        self.shadow.append(ShadowEntry.new(name, hashed))

    def save(self) -> None:
        _replace(self.path("passwd"), [u.line() for u in self.passwd])
        _replace(self.path("group"), [g.line() for g in self.groups])
        _replace(self.path("shadow"), [s.line() for s in self.shadow])


def read_accounts(root: Path) -> Accounts:
    """passwd and group for reading (shadow is root's only, and readers do not need it)."""
    return Accounts(root, with_shadow=False)


@contextlib.contextmanager
def edit_accounts(root: Path) -> Iterator[Accounts]:
    """passwd, group and shadow under the account lock; written back when the block ends
    without an error, left untouched otherwise."""
    lock_path = under(root, "/etc/.pwd.lock")
    with open(lock_path, "a") as lock:
        os.chmod(lock_path, 0o600)
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            accounts = Accounts(root, with_shadow=True)
            yield accounts
            accounts.save()
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _replace(path: Path, lines: List[str]) -> None:
    """Write ``lines`` to ``path`` atomically, keeping its owner and mode."""
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Password hashes, through the system's libcrypt (the library PAM checks passwords with).

_libcrypt = None


def _crypt_library():
    global _libcrypt
    if _libcrypt is None:
        lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1", use_errno=True)
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        _libcrypt = lib
    return _libcrypt


def hash_password(password: str) -> str:
    """A crypt(3) hash of ``password`` with a fresh random salt, in libcrypt's strongest
    default method (yescrypt on Debian 12)."""
    lib = _crypt_library()
    setting = lib.crypt_gensalt(None, 0, None, 0)
    if not setting:
        raise StandinError("libcrypt could not make a password salt.")
    hashed = lib.crypt(password.encode("utf-8"), setting)
    if not hashed or hashed.startswith(b"*"):
        raise StandinError("libcrypt could not hash the password.")
    return hashed.decode("ascii")


def password_matches(password: str, hashed: str) -> bool:
    result = _crypt_library().crypt(password.encode("utf-8"), hashed.encode("ascii"))
    return result is not None and result.decode("ascii") == hashed


# ---------------------------------------------------------------------------------------------
# Per-record attributes Linux has no field for


def record_side_path(root: Path, name: str) -> Path:
    return under(root, f"/private/var/db/edge-lab/dslocal/{name}.json")


def load_record_side(root: Path, name: str) -> Dict[str, object]:
    try:
        return json.loads(record_side_path(root, name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def save_record_side(root: Path, name: str, data: Dict[str, object]) -> None:
    path = record_side_path(root, name)
    if not data:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


# ---------------------------------------------------------------------------------------------
# The host's state file


def state_path(root: Path) -> Path:
    return under(root, "/private/var/db/edge-lab/state.json")


def load_state(root: Path) -> Dict[str, object]:
    """The host's state with the defaults of a fresh Mac mini filled in."""
    try:
        from edge_lab import hoststate
    except ImportError:
        hoststate = None
    if hoststate is not None and hasattr(hoststate, "load"):
        raw = hoststate.load(root)
    else:
        try:
            raw = json.loads(state_path(root).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
    state = dict(raw or {})
    for key, default in STATE_DEFAULTS.items():
        if isinstance(default, dict):
            merged = dict(default)
            merged.update(state.get(key) or {})
            state[key] = merged
        else:
            state.setdefault(key, default)
    return state


def update_state(root: Path, change) -> None:
    """Apply ``change`` (which edits the state dictionary in place) under the state lock.

    The lab's ``edge_lab.hoststate.update`` is used when it is there, so the stand-ins and
    the lab's commands take the same lock; otherwise the same protocol is followed here:
    ``flock`` on the sibling ``state.json.lock``, then an atomic replace.
    """
    try:
        from edge_lab import hoststate
    except ImportError:
        hoststate = None
    if hoststate is not None and hasattr(hoststate, "update"):
        hoststate.update(root, change)
        return
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        change(state)
        write_json_atomic(path, state)
