"""launchd for one simulated Mac, and the Messages.app that answers its users' Apple events.

``python -m edge_lab.launchd --socket PATH`` runs the daemon (root, foreground)
for one host. Clients (the ``launchctl`` and ``osascript`` stand-ins, the lab's
human-step commands) send one JSON request per connection over the unix
socket; the daemon learns who is asking from the socket (SO_PEERCRED), as
launchd learns it from the Mach message's audit token.

What it keeps from launchd, because the collection and the relay depend on it:

- domains ``system`` and ``gui/<uid>``; a gui domain exists only while its
  user has a GUI session (``gui_login``), and a host start has none;
- jobs run for real: forked as the job's user with its groups, a minimal
  environment, WorkingDirectory, StandardOutPath/StandardErrorPath opened as
  that user (no ``~`` or ``$HOME`` expansion: a spawn that cannot open them
  exits 78, EX_CONFIG), RunAtLoad, KeepAlive, ThrottleInterval, ExitTimeOut;
- ``bootout`` answers at once while the job is still exiting; the service stays
  in its domain until its process is gone, and bootstrapping it meanwhile fails;
- a plist that is group- or world-writable, owned by someone else than root or
  the domain's user, or unreadable as a property list is refused.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import plistlib
import signal
import socket
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edge_lab import hoststate, messages

log = logging.getLogger("edge_lab.launchd")

SOCKET_PATH = "/private/var/run/edge-lab/launchd.sock"
MINIMAL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"

EX_CONFIG = 78
DEFAULT_THROTTLE_S = 10
DEFAULT_EXIT_TIMEOUT_S = 20
SEND_OUTCOME_DELAY_S = 0.05
CRASH_SIGNALS = {
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGABRT,
    signal.SIGFPE,
    signal.SIGBUS,
    signal.SIGSEGV,
    signal.SIGSYS,
}
MAX_REQUEST_BYTES = 1 << 20


class RequestError(Exception):
    """A refusal with the exit status and the message launchctl prints."""

    def __init__(self, status: int, err: str):
        super().__init__(err)
        self.status = status
        self.err = err


def lab_root() -> Path:
    """The host's root: ``/`` inside a lab host, ``$EDGE_LAB_ROOT`` in tests."""
    return Path(os.environ.get("EDGE_LAB_ROOT") or "/")


def default_socket_path() -> str:
    """``$EDGE_LAB_LAUNCHD_SOCKET``, else the socket under the host's root."""
    if os.environ.get("EDGE_LAB_LAUNCHD_SOCKET"):
        return os.environ["EDGE_LAB_LAUNCHD_SOCKET"]
    root = os.environ.get("EDGE_LAB_ROOT")
    return str(Path(root) / SOCKET_PATH.lstrip("/")) if root else SOCKET_PATH


def under_root(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def request(socket_path, op: str, **args) -> Dict[str, Any]:
    """Send one request to the daemon and return its answer.

    Every answer carries ``status`` (the exit status a command should use) and
    may carry ``out`` and ``err`` (what it should print).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(
                f"launchd is not running on this host (no answer on {socket_path}): "
                "start the host with edge-lab up"
            ) from exc
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError(f"launchd at {socket_path} closed the connection without answer")
    return json.loads(data)


def gui_login(uid: int, socket_path=None) -> Dict[str, Any]:
    """Log ``uid`` in at the GUI: its gui domain appears and its LaunchAgents load."""
    return request(socket_path or default_socket_path(), "gui_login", uid=int(uid))


def gui_logout(uid: int, socket_path=None) -> Dict[str, Any]:
    """Log ``uid`` out: its jobs stop and its gui domain goes away."""
    return request(socket_path or default_socket_path(), "gui_logout", uid=int(uid))


# --- the host's users and state -------------------------------------------------------


class Account:
    def __init__(self, name: str, uid: int, gid: int, home: str, shell: str):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home
        self.shell = shell


def _read_colon_file(path: Path) -> List[List[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def find_account(root: Path, *, uid: Optional[int] = None, name: Optional[str] = None):
    """The host's passwd entry by uid or name, or None."""
    for fields in _read_colon_file(root / "etc/passwd"):
        if len(fields) < 7:
            continue
        if (uid is not None and fields[2] == str(uid)) or (name is not None and fields[0] == name):
            return Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
    return None


def group_ids(root: Path, account: Account) -> List[int]:
    """The primary group and every group of the host's /etc/group listing the user."""
    ids = [account.gid]
    for fields in _read_colon_file(root / "etc/group"):
        if len(fields) >= 4 and account.name in fields[3].split(",") and int(fields[2]) not in ids:
            ids.append(int(fields[2]))
    return ids


def find_group(root: Path, name: str) -> Optional[int]:
    for fields in _read_colon_file(root / "etc/group"):
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2])
    return None


def record_sessions(root: Path, uids: List[int]) -> None:
    """Keep state.json's ``gui_sessions`` equal to the gui domains that exist."""

    def store(state):
        state["gui_sessions"] = sorted(uids)

    hoststate.update(root, store)


# --- jobs -------------------------------------------------------------------------------


# The keys this launchd acts on, with the type launchd.plist(5) gives them.
PLIST_TYPES = (
    ("Program", str, "a string"),
    ("UserName", str, "a string"),
    ("GroupName", str, "a string"),
    ("WorkingDirectory", str, "a string"),
    ("StandardOutPath", str, "a string"),
    ("StandardErrorPath", str, "a string"),
    ("RunAtLoad", bool, "a boolean"),
    ("KeepAlive", (bool, dict), "a boolean or a dictionary"),
    ("ThrottleInterval", int, "an integer"),
    ("ExitTimeOut", int, "an integer"),
    ("EnvironmentVariables", dict, "a dictionary"),
)


def check_plist_file(path: Path, allowed_owner: int) -> Dict[str, Any]:
    """Read a job's plist as launchd would, refusing what launchd refuses."""
    try:
        st = path.stat()
    except OSError as exc:
        raise RequestError(
            2, f"{path}: No such file or directory\nBootstrap failed: 2: {exc.strerror}"
        ) from exc
    if st.st_uid not in (0, allowed_owner) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RequestError(
            122,
            f"{path}: Path had bad ownership/permissions\n"
            "Bootstrap failed: 122: Path had bad ownership/permissions",
        )
    try:
        with open(path, "rb") as fh:
            plist = plistlib.load(fh)
    except Exception as exc:
        raise RequestError(
            5,
            f"{path}: plist is not valid ({exc}); check it with plutil -lint\n"
            "Bootstrap failed: 5: Input/output error",
        ) from exc
    if not isinstance(plist, dict) or not isinstance(plist.get("Label"), str):
        raise RequestError(
            5, f"{path}: plist has no Label string\nBootstrap failed: 5: Input/output error"
        )
    args = plist.get("ProgramArguments")
    program = plist.get("Program")
    arguments_ok = isinstance(args, list) and args and all(isinstance(a, str) for a in args)
    if not program and not arguments_ok:
        raise RequestError(
            5,
            f"{path}: plist names no Program or ProgramArguments\n"
            "Bootstrap failed: 5: Input/output error",
        )
    for key, kind, what in PLIST_TYPES:
        if key in plist and not isinstance(plist[key], kind):
            raise RequestError(
                5,
                f"{path}: {key} must be {what}; check it with plutil -lint\n"
                "Bootstrap failed: 5: Input/output error",
            )
    return plist


class Job:
    """One loaded service and its process."""

    def __init__(self, domain: "Domain", plist_path: Path, plist: Dict[str, Any]):
        self.domain = domain
        self.plist_path = plist_path
        self.plist = plist
        self.label: str = plist["Label"]
        args = plist.get("ProgramArguments") or [plist["Program"]]
        self.arguments: List[str] = [str(a) for a in args]
        self.program: str = plist.get("Program") or self.arguments[0]
        self.throttle = int(plist.get("ThrottleInterval", DEFAULT_THROTTLE_S))
        self.exit_timeout = int(plist.get("ExitTimeOut", DEFAULT_EXIT_TIMEOUT_S))
        self.keep_alive = plist.get("KeepAlive", False)
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.runs = 0
        self.last_exit: Optional[int] = None  # exit status, or -signal
        self.removing = False
        self.kill_timer: Optional[asyncio.TimerHandle] = None
        self.respawn_timer: Optional[asyncio.TimerHandle] = None
        self.start_after_exit = False

    @property
    def target(self) -> str:
        return f"{self.domain.name}/{self.label}"

    def runs_at_load(self) -> bool:
        keep = self.keep_alive
        if keep is True:
            return True
        if isinstance(keep, dict) and "SuccessfulExit" in keep:
            return True
        return bool(self.plist.get("RunAtLoad", False))

    def wants_restart(self, status: int) -> bool:
        """KeepAlive's verdict on an exit (status, or -signal when killed)."""
        keep = self.keep_alive
        if keep is True:
            return True
        if not isinstance(keep, dict):
            return False
        crashed = status < 0 and -status in CRASH_SIGNALS
        if "SuccessfulExit" in keep and (status == 0) == bool(keep["SuccessfulExit"]):
            return True
        return "Crashed" in keep and crashed == bool(keep["Crashed"])

    def state(self) -> str:
        if self.pid is not None:
            return "running"
        if self.respawn_timer is not None:
            return "spawn scheduled"
        return "not running"


class Domain:
    def __init__(self, name: str, uid: int):
        self.name = name
        self.uid = uid
        self.jobs: Dict[str, Job] = {}


def _spoken(domain_name: str) -> str:
    """A domain as launchctl's messages name it: ``user gui: 501`` or ``system``."""
    kind, _, uid = domain_name.partition("/")
    return f"user {kind}: {uid}" if uid else kind


def _describe_exit(status: Optional[int]) -> str:
    if status is None:
        return "last exit code = (never exited)"
    if status < 0:
        return f"last terminating signal = {signal.strsignal(-status)}: {-status}"
    if status == EX_CONFIG:
        return f"last exit code = {status}: EX_CONFIG"
    return f"last exit code = {status}"


class Launchd:
    def __init__(self, root: Path):
        self.root = root
        self.domains: Dict[str, Domain] = {"system": Domain("system", 0)}
        self.by_pid: Dict[int, Job] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    # -- process supervision ------------------------------------------------------------

    def _job_identity(self, job: Job) -> Tuple[Account, List[int]]:
        if job.domain.name == "system":
            name = job.plist.get("UserName", "root")
            account = find_account(self.root, name=name)
            if account is None and name == "root":
                account = Account("root", 0, 0, "/var/root", "/bin/sh")
        else:
            account = find_account(self.root, uid=job.domain.uid)
        if account is None:
            raise LookupError(f"{job.target}: its user is not in {self.root / 'etc/passwd'}")
        groups = group_ids(self.root, account)
        group_name = job.plist.get("GroupName")
        if job.domain.name == "system" and group_name:
            gid = find_group(self.root, group_name)
            if gid is None:
                raise LookupError(f"{job.target}: group {group_name} does not exist")
            account = Account(account.name, account.uid, gid, account.home, account.shell)
            groups = [gid] + [g for g in groups if g != gid]
        return account, groups

    def spawn(self, job: Job) -> None:
        job.respawn_timer = None
        try:
            account, groups = self._job_identity(job)
        except LookupError as exc:
            log.error("spawn failed: %s", exc)
            job.last_exit = EX_CONFIG
            return

        env = {
            "PATH": MINIMAL_PATH,
            "HOME": account.home,
            "USER": account.name,
            "LOGNAME": account.name,
            "SHELL": account.shell or "/bin/sh",
            "XPC_SERVICE_NAME": job.label,
        }
        for key, value in (job.plist.get("EnvironmentVariables") or {}).items():
            env[str(key)] = str(value)
        stdout_path = job.plist.get("StandardOutPath")
        stderr_path = job.plist.get("StandardErrorPath")
        workdir = job.plist.get("WorkingDirectory")

        pid = os.fork()
        if pid == 0:  # the child: become the user, then exec; never return
            try:
                self._exec_child(job, account, groups, env, stdout_path, stderr_path, workdir)
            finally:
                os._exit(EX_CONFIG)

        job.pid = pid
        job.started_at = time.monotonic()
        job.runs += 1
        self.by_pid[pid] = job
        log.info("%s started, pid %d, as %s", job.target, pid, account.name)

    @staticmethod
    def _exec_child(job, account, groups, env, stdout_path, stderr_path, workdir) -> None:
        def fail(what: str, exc: OSError) -> None:
            os.write(2, f"edge-lab launchd: {job.target}: {what}: {exc.strerror}\n".encode())
            os._exit(EX_CONFIG)

        os.setsid()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            os.setgroups(groups)
            os.setgid(account.gid)
            os.setuid(account.uid)
        except OSError as exc:
            fail("cannot become the job's user", exc)
        os.umask(0o022)
        # Paths are opened literally, from /, as launchd does: no ~ or $HOME.
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        for fd, path in ((1, stdout_path), (2, stderr_path)):
            if not path:
                os.dup2(null, fd)
                continue
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                fail(f"cannot open {path}", exc)
            os.dup2(out, fd)
        if workdir:
            try:
                os.chdir(workdir)
            except OSError as exc:
                fail(f"cannot enter WorkingDirectory {workdir}", exc)
        try:
            if "/" in job.program:
                os.execve(job.program, job.arguments, env)
            os.execvpe(job.program, job.arguments, env)
        except OSError as exc:
            fail(f"cannot run {job.program}", exc)

    def reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.by_pid.pop(pid, None)
            if job is not None:
                self._job_exited(job, os.waitstatus_to_exitcode(wait_status))

    def _job_exited(self, job: Job, status: int) -> None:
        ran_for = time.monotonic() - job.started_at
        process_group = job.pid
        job.pid = None
        job.last_exit = status
        if job.kill_timer:
            job.kill_timer.cancel()
            job.kill_timer = None
        # launchd ends whatever the job left behind in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process_group, signal.SIGKILL)
        log.info("%s exited: %s", job.target, _describe_exit(status))

        if job.removing:
            self._forget(job)
            return
        if job.start_after_exit:
            job.start_after_exit = False
            self.spawn(job)
            return
        if job.wants_restart(status):
            delay = max(0.0, job.throttle - ran_for)
            if delay > 0:
                log.info("%s respawn throttled for %.1f s", job.target, delay)
            job.respawn_timer = self.loop.call_later(delay, self.spawn, job)

    def _forget(self, job: Job) -> None:
        domain = self.domains.get(job.domain.name)
        if domain is not None and domain.jobs.get(job.label) is job:
            del domain.jobs[job.label]
        elif job.domain.jobs.get(job.label) is job:
            del job.domain.jobs[job.label]
        log.info("%s removed", job.target)

    def stop(self, job: Job) -> None:
        """SIGTERM now, SIGKILL after ExitTimeOut if the process is still there."""
        if job.pid is None:
            return
        try:
            os.kill(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if job.kill_timer is None:
            job.kill_timer = self.loop.call_later(job.exit_timeout, self._kill, job)

    def _kill(self, job: Job) -> None:
        job.kill_timer = None
        if job.pid is not None:
            log.info("%s did not exit within %d s: SIGKILL", job.target, job.exit_timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGKILL)

    def remove(self, job: Job) -> None:
        job.removing = True
        if job.respawn_timer:
            job.respawn_timer.cancel()
            job.respawn_timer = None
        if job.pid is None:
            self._forget(job)
        else:
            self.stop(job)

    # -- domains --------------------------------------------------------------------------

    def _domain(self, name: str, caller_uid: int, *, modify: bool) -> Domain:
        if name == "system":
            if modify and caller_uid != 0:
                raise RequestError(1, "Operation not permitted")
            return self.domains["system"]
        kind, _, uid_text = name.partition("/")
        if kind != "gui" or not uid_text.isdigit():
            raise RequestError(64, f"Unrecognized target specifier: {name}")
        uid = int(uid_text)
        if modify and caller_uid not in (0, uid):
            raise RequestError(1, "Operation not permitted")
        domain = self.domains.get(f"gui/{uid}")
        if domain is None:
            raise RequestError(125, "Domain does not support specified action")
        return domain

    def _load(self, domain: Domain, path: Path) -> Job:
        plist = check_plist_file(path, domain.uid)
        existing = domain.jobs.get(plist["Label"])
        if existing is not None:
            raise RequestError(5, "Bootstrap failed: 5: Input/output error")
        job = Job(domain, path, plist)
        domain.jobs[job.label] = job
        log.info("%s loaded from %s", job.target, path)
        if job.runs_at_load():
            self.spawn(job)
        return job

    def op_gui_login(self, caller: int, uid: int) -> Dict[str, Any]:
        if caller != 0:
            raise RequestError(1, "only root may start a GUI session")
        account = find_account(self.root, uid=int(uid))
        if account is None:
            raise RequestError(
                3, f"no user with uid {uid} in {self.root / 'etc/passwd'}: create the user first"
            )
        name = f"gui/{account.uid}"
        if name in self.domains:
            return {"status": 0, "out": f"{account.name} already has a GUI session\n"}
        domain = Domain(name, account.uid)
        self.domains[name] = domain
        self._sessions_changed()
        log.info("GUI session started for %s (uid %d)", account.name, account.uid)

        loaded, skipped = [], []
        folders = [
            under_root(self.root, "/Library/LaunchAgents"),
            under_root(self.root, account.home) / "Library/LaunchAgents",
        ]
        for folder in folders:
            for path in sorted(folder.glob("*.plist")) if folder.is_dir() else []:
                try:
                    loaded.append(self._load(domain, path).label)
                except RequestError as exc:
                    skipped.append(str(path))
                    log.warning("login of %s: %s skipped: %s", account.name, path, exc.err)
        return {"status": 0, "loaded": loaded, "skipped": skipped}

    def op_gui_logout(self, caller: int, uid: int) -> Dict[str, Any]:
        if caller != 0:
            raise RequestError(1, "only root may end a GUI session")
        domain = self.domains.pop(f"gui/{int(uid)}", None)
        if domain is None:
            return {"status": 0, "out": f"uid {uid} has no GUI session\n"}
        self._sessions_changed()
        for job in list(domain.jobs.values()):
            self.remove(job)
        log.info("GUI session of uid %d ended", uid)
        return {"status": 0}

    def _session_uids(self) -> List[int]:
        return sorted(d.uid for n, d in self.domains.items() if n != "system")

    def _sessions_changed(self) -> None:
        record_sessions(self.root, self._session_uids())

    def op_sessions(self, caller: int) -> Dict[str, Any]:
        return {"status": 0, "gui_sessions": self._session_uids()}

    def op_bootstrap(self, caller: int, domain: str, paths: List[str]) -> Dict[str, Any]:
        try:
            target = self._domain(domain, caller, modify=True)
        except RequestError as exc:
            raise RequestError(exc.status, f"Bootstrap failed: {exc.status}: {exc.err}") from exc
        if not paths:
            raise RequestError(64, "Usage: launchctl bootstrap <domain-target> [service-path...]")
        for path in paths:
            self._load(target, Path(path))
        return {"status": 0}

    def _service(self, target: str, caller: int, *, modify: bool) -> Job:
        domain_name, _, label = target.rpartition("/")
        if not domain_name or not label:
            raise RequestError(64, f"Unrecognized target specifier: {target}")
        try:
            domain = self._domain(domain_name, caller, modify=modify)
        except RequestError as exc:
            if exc.status != 125 or modify:
                raise
            raise RequestError(
                113, f'Could not find service "{label}" in domain for {_spoken(domain_name)}'
            ) from exc
        job = domain.jobs.get(label)
        if job is None:
            raise RequestError(
                113, f'Could not find service "{label}" in domain for {_spoken(domain_name)}'
            )
        return job

    def op_bootout(self, caller: int, target: str, paths: Optional[List[str]] = None):
        if paths:
            try:
                domain = self._domain(target, caller, modify=True)
            except RequestError as exc:
                raise RequestError(exc.status, f"Boot-out failed: {exc.status}: {exc.err}") from exc
            jobs = []
            for path in paths:
                label = None
                try:
                    with open(path, "rb") as fh:
                        label = plistlib.load(fh).get("Label")
                except (OSError, plistlib.InvalidFileException, AttributeError):
                    pass
                job = domain.jobs.get(label) if isinstance(label, str) else None
                if job is None:
                    raise RequestError(5, "Boot-out failed: 5: Input/output error")
                jobs.append(job)
        else:
            domain_name = target.rpartition("/")[0]
            try:
                self._domain(domain_name, caller, modify=True)
                jobs = [self._service(target, caller, modify=True)]
            except RequestError as exc:
                if exc.status == 113:
                    raise RequestError(3, "Boot-out failed: 3: No such process") from exc
                raise RequestError(exc.status, f"Boot-out failed: {exc.status}: {exc.err}") from exc
        for job in jobs:
            if not job.removing:
                self.remove(job)
        return {"status": 0}

    def op_kickstart(self, caller: int, target: str, kill: bool = False) -> Dict[str, Any]:
        job = self._service(target, caller, modify=True)
        if job.removing:
            raise RequestError(5, "Input/output error")
        if job.respawn_timer:
            job.respawn_timer.cancel()
            job.respawn_timer = None
        if job.pid is None:
            self.spawn(job)
        elif kill:
            job.start_after_exit = True
            self.stop(job)
        return {"status": 0}

    def op_kill(self, caller: int, target: str, signal_number: int) -> Dict[str, Any]:
        """Signal the running process as launchctl kill does; what follows (a respawn under
        KeepAlive, say) is the job's ordinary exit handling."""
        job = self._service(target, caller, modify=True)
        if job.pid is None:
            raise RequestError(3, "No such process")
        try:
            os.kill(job.pid, signal_number)
        except ProcessLookupError as exc:
            raise RequestError(3, "No such process") from exc
        return {"status": 0}

    def op_print(self, caller: int, target: str) -> Dict[str, Any]:
        if target == "system" or (target.startswith("gui/") and target.count("/") == 1):
            try:
                domain = self._domain(target, caller, modify=False)
            except RequestError as exc:
                if exc.status != 125:
                    raise
                raise RequestError(113, f"Could not find domain for {_spoken(target)}") from exc
            return {"status": 0, "out": self._print_domain(domain)}
        job = self._service(target, caller, modify=False)
        return {"status": 0, "out": self._print_service(job), "service": self._service_info(job)}

    def _service_info(self, job: Job) -> Dict[str, Any]:
        return {
            "label": job.label,
            "state": job.state(),
            "pid": job.pid,
            "path": str(job.plist_path),
            "last_exit": job.last_exit,
            "runs": job.runs,
        }

    def _print_service(self, job: Job) -> str:
        lines = [
            f"{job.target} = {{",
            "\tactive count = " + ("1" if job.pid else "0"),
            f"\tpath = {job.plist_path}",
            "\ttype = " + ("LaunchDaemon" if job.domain.name == "system" else "LaunchAgent"),
            f"\tstate = {job.state()}",
            "",
            f"\tprogram = {job.program}",
            "\targuments = {",
            *(f"\t\t{a}" for a in job.arguments),
            "\t}",
            "",
        ]
        if job.plist.get("WorkingDirectory"):
            lines.append(f"\tworking directory = {job.plist['WorkingDirectory']}")
        if job.plist.get("StandardOutPath"):
            lines.append(f"\tstdout path = {job.plist['StandardOutPath']}")
        if job.plist.get("StandardErrorPath"):
            lines.append(f"\tstderr path = {job.plist['StandardErrorPath']}")
        lines += [
            "\tdefault environment = {",
            f"\t\tPATH => {MINIMAL_PATH}",
            "\t}",
            "",
            f"\tdomain = {job.domain.name}",
            f"\tminimum runtime = {job.throttle}",
            f"\texit timeout = {job.exit_timeout}",
            f"\truns = {job.runs}",
        ]
        if job.pid is not None:
            lines.append(f"\tpid = {job.pid}")
        lines += [f"\t{_describe_exit(job.last_exit)}", "}", ""]
        return "\n".join(lines)

    def _print_domain(self, domain: Domain) -> str:
        lines = [
            f"{domain.name} = {{",
            "\ttype = " + ("system" if domain.name == "system" else "gui"),
            f"\thandle = {domain.uid}",
            f"\tactive count = {sum(1 for j in domain.jobs.values() if j.pid)}",
            "",
            "\tservices = {",
        ]
        for job in sorted(domain.jobs.values(), key=lambda j: j.label):
            status = "-" if job.last_exit is None else str(job.last_exit)
            lines.append(f"\t\t{job.pid or 0:>8} {status:>6} \t{job.label}")
        lines += ["\t}", "}", ""]
        return "\n".join(lines)

    def op_list(self, caller: int) -> Dict[str, Any]:
        domain = self.domains.get("system" if caller == 0 else f"gui/{caller}")
        lines = ["PID\tStatus\tLabel"]
        for job in sorted(domain.jobs.values(), key=lambda j: j.label) if domain else []:
            status = "-" if job.last_exit is None else str(job.last_exit)
            lines.append(f"{job.pid if job.pid else '-'}\t{status}\t{job.label}")
        return {"status": 0, "out": "\n".join(lines) + "\n"}

    # -- Messages.app ---------------------------------------------------------------------

    def op_messages_send(
        self, caller: int, mode: str, target: str, parts: List[List[str]], asuser=None
    ) -> Dict[str, Any]:
        """Messages answering the relay's script: checks, then one outgoing row per part.

        ``parts`` are ``[kind, value]`` pairs: ``text`` and the text, or ``file`` and a POSIX
        path. A file Messages cannot reach (outside the user's ~/Library/Messages and
        ~/Pictures, or not readable by the user) is accepted and then fails, as on a Mac:
        osascript succeeds and the row is marked failed.
        """
        # launchctl asuser runs a command as root in the user's session: its
        # Apple events reach that user's Messages.
        uid = int(asuser) if caller == 0 and asuser is not None else caller
        if mode not in ("chat", "handle") or not isinstance(target, str) or not target:
            raise RequestError(
                1, "execution error: Messages got an error: Invalid key form. (-10002)"
            )
        if not isinstance(parts, list) or not all(
            isinstance(p, list)
            and len(p) == 2
            and p[0] in ("text", "file")
            and isinstance(p[1], str)
            for p in parts
        ):
            raise RequestError(64, "parts must be a list of [kind, value] pairs")
        if f"gui/{uid}" not in self.domains:
            raise RequestError(
                -600, "execution error: Messages got an error: Application isn't running. (-600)"
            )
        account = find_account(self.root, uid=uid)
        state = hoststate.load(self.root)
        if account is None or account.name not in (state.get("automation") or []):
            raise RequestError(
                -1743, "execution error: Not authorized to send Apple events to Messages. (-1743)"
            )
        phone = (state.get("imessage") or {}).get(account.name)
        if not phone:
            raise RequestError(
                -1719,
                "execution error: Messages got an error: Can't get account 1 whose "
                "service type = iMessage. Invalid index. (-1719)",
            )
        chat_db = under_root(self.root, account.home) / "Library/Messages/chat.db"
        if not chat_db.exists():
            messages.create_chat_db(chat_db, account.uid, account.gid)
        if mode == "chat" and not messages.chat_exists(chat_db, target):
            raise RequestError(
                -1728,
                f'execution error: Messages got an error: Can\'t get chat id "{target}". (-1728)',
            )

        recipients = [target] if mode == "handle" else messages.chat_handles(chat_db, target)
        failing = bool(set(state.get("undeliverable") or []) & set(recipients))
        outcomes = []
        for kind, value in parts:
            if kind == "text":
                guid = messages.add_outgoing(
                    chat_db, target=target, mode=mode, text=value, account_phone=phone
                )
                outcomes.append((guid, failing))
            else:
                guid, reachable = self._outgoing_file(chat_db, account, target, mode, value, phone)
                outcomes.append((guid, failing or not reachable))
        self.loop.call_later(SEND_OUTCOME_DELAY_S, self._send_outcome, chat_db, outcomes)
        guids = [guid for guid, _ in outcomes]
        log.info("Messages: %s queued %d bubble(s) %s", account.name, len(guids), ",".join(guids))
        return {"status": 0, "guids": guids}

    def _outgoing_file(
        self, chat_db: Path, account: Account, target: str, mode: str, path: str, phone: str
    ) -> Tuple[str, bool]:
        """The row of a file sent (U+FFFC and its attachment), and whether Messages can read it.

        A file Messages can read is copied into ~/Library/Messages/Attachments, as Messages
        does, and the attachment row points at the copy.
        """
        home = account.home.rstrip("/")
        reach = (f"{home}/Library/Messages/", f"{home}/Pictures/")
        normal = os.path.normpath(path)
        source = under_root(self.root, normal)
        reachable = normal.startswith(reach) and self._user_can_read(source, account)
        guid = messages.add_outgoing(
            chat_db, target=target, mode=mode, text="\ufffc", account_phone=phone
        )
        name = os.path.basename(normal)
        copy = f"{home}/Library/Messages/Attachments/{guid[-2:]}/{guid}/{name}"
        size = 0
        if reachable:
            stored = under_root(self.root, copy)
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(source.read_bytes())
            os.chown(stored, account.uid, account.gid)
            size = stored.stat().st_size
        conn = messages.connect(chat_db)
        try:
            with conn:
                attachment = conn.execute(
                    "INSERT INTO attachment (guid, original_guid, created_date, filename, "
                    "transfer_name, total_bytes, is_outgoing, transfer_state) "
                    "VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                    (
                        f"at_0_{guid}",
                        f"at_0_{guid}",
                        messages.apple_now(),
                        copy.replace(home, "~", 1),
                        name,
                        size,
                        5 if reachable else 6,
                    ),
                ).lastrowid
                conn.execute("UPDATE message SET cache_has_attachments = 1 WHERE guid = ?", (guid,))
                conn.execute(
                    "INSERT INTO message_attachment_join (message_id, attachment_id) "
                    "SELECT ROWID, ? FROM message WHERE guid = ?",
                    (attachment, guid),
                )
        finally:
            conn.close()
        return guid, reachable

    def _user_can_read(self, path: Path, account: Account) -> bool:
        """Whether `account` may read the file at `path`, by its owner, group and mode."""
        try:
            info = path.stat()
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        if info.st_uid == account.uid:
            return bool(info.st_mode & stat.S_IRUSR)
        if info.st_gid in group_ids(self.root, account):
            return bool(info.st_mode & stat.S_IRGRP)
        return bool(info.st_mode & stat.S_IROTH)

    @staticmethod
    def _send_outcome(chat_db: Path, outcomes: List[Tuple[str, bool]]) -> None:
        for guid, failed in outcomes:
            error = messages.SEND_FAILED_ERROR if failed else 0
            try:
                messages.mark_sent(chat_db, guid, error=error)
            except Exception as exc:  # the database may be gone: the host is being torn down
                log.error("Messages: cannot record the outcome of %s: %s", guid, exc)
                return
            log.info("Messages: %s %s", "failed" if error else "sent", guid)

    # -- serving ----------------------------------------------------------------------------

    OPS = {
        "gui_login",
        "gui_logout",
        "sessions",
        "bootstrap",
        "bootout",
        "kickstart",
        "kill",
        "print",
        "list",
        "messages_send",
    }

    def dispatch(self, caller: int, message: Dict[str, Any]) -> Dict[str, Any]:
        op = message.get("op")
        args = message.get("args") or {}
        if op not in self.OPS or not isinstance(args, dict):
            return {"status": 64, "err": f"unknown request {op!r}"}
        try:
            return getattr(self, f"op_{op}")(caller, **args)
        except RequestError as exc:
            return {"status": exc.status, "err": exc.err}
        except TypeError as exc:
            return {"status": 64, "err": f"bad arguments for {op}: {exc}"}
        except Exception as exc:  # one bad request must not take the host's launchd down
            log.exception("request %s failed", op)
            return {"status": 1, "err": f"launchd could not complete {op}: {exc}"}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        try:
            data = await asyncio.wait_for(reader.read(MAX_REQUEST_BYTES), timeout=10)
            try:
                answer = self.dispatch(uid, json.loads(data))
            except (ValueError, AttributeError):
                answer = {"status": 64, "err": "request is not a JSON object"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve(self, socket_path: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stopping.set)

        path = Path(socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self.handle, path=str(path))
        # A host start is a reboot: nobody is logged in at the GUI.
        self._sessions_changed()
        # Every user's relay talks to Messages through this socket.
        os.chmod(path, 0o666)
        log.info("launchd listening on %s (root %s)", path, self.root)

        await stopping.wait()
        server.close()
        await self.shutdown()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def shutdown(self) -> None:
        """Stop every job, as a shutdown does: SIGTERM, then SIGKILL after ExitTimeOut."""
        for name in [n for n in self.domains if n != "system"] + ["system"]:
            domain = self.domains[name]
            for job in list(domain.jobs.values()):
                self.remove(job)
        self.domains = {"system": self.domains["system"]}
        self._sessions_changed()
        while self.by_pid:
            await asyncio.sleep(0.05)
        log.info("launchd stopped")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_lab.launchd", description="launchd for one lab host"
    )
    parser.add_argument("--socket", default=None, help=f"unix socket (default {SOCKET_PATH})")
    parser.add_argument("--root", default=None, help="host root (default $EDGE_LAB_ROOT or /)")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s launchd %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if os.geteuid() != 0:
        print("edge_lab.launchd must run as root: it starts jobs as their users", file=sys.stderr)
        return 1
    root = Path(options.root) if options.root else lab_root()
    asyncio.run(Launchd(root).serve(options.socket or default_socket_path()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
