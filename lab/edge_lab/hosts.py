"""Making, starting, finding and stopping the lab's hosts (simulated Mac minis)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import hoststate, tcc
from .layout import PYENV_ROOT, PYTHON39, LabError, venv_python

ADMIN_UID = 501
STAFF_GID = 20
# macOS's groups take these gids; whatever Debian had there (root, man, dialout) makes way,
# and so does Debian's own group called staff (gid 50).
MACOS_GROUPS = (
    ("wheel", 0, "root"),
    ("everyone", 12, ""),
    ("staff", 20, "root"),
    ("admin", 80, "root,admin"),
)
TEMPLATE = "System/Library/User Template/English.lproj"
TEMPLATE_FOLDERS = (
    "Desktop",
    "Documents",
    "Downloads",
    "Movies",
    "Music",
    "Pictures",
    "Public",
    "Library/Preferences",
    "Library/Application Support",
    "Library/Caches",
    "Library/Logs",
    "Library/LaunchAgents",
)
CLT_PYTHON = "Library/Developer/CommandLineTools/usr/bin/python3"
# Where macOS keeps each command the stand-ins play (/bin is /usr/bin on Debian).
STANDINS = {
    "usr/sbin": ("sysadminctl", "createhomedir", "dseditgroup"),
    "usr/bin": (
        "launchctl",
        "dscl",
        "plutil",
        "sw_vers",
        "pmset",
        "fdesetup",
        "xcode-select",
        "osascript",
    ),
}
PYTHON3_STUB = """#!/bin/sh
# macOS's /usr/bin/python3: runs the Command Line Tools' python3 once they are installed.
clt=/Library/Developer/CommandLineTools/usr/bin/python3
if [ -x "$clt" ]; then
    exec "$clt" "$@"
fi
echo "xcode-select: note: No developer tools were found, requesting install." >&2
echo "If developer tools are located at a non-default location on disk, use \\`sudo \
xcode-select --switch path/to/Xcode.app\\` to specify the Xcode that you wish to use for \
command line developer tools, and cancel the installation dialog." >&2
echo "See \\`man xcode-select' for more details." >&2
exit 1
"""
SSH_WAIT_S = 30


# ---------------------------------------------------------------- the host's files


def _mkdir(path, mode=0o755, uid=0, gid=0):
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _rewrite_groups(etc):
    replaced = {name for name, _, _ in MACOS_GROUPS}
    gids = {str(gid) for _, gid, _ in MACOS_GROUPS}
    group_lines, dropped = [], set()
    for line in (etc / "group").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] in replaced or fields[2] in gids):
            dropped.add(fields[0])
            continue
        group_lines.append(line)
    group_lines += [f"{name}:x:{gid}:{members}" for name, gid, members in MACOS_GROUPS]
    (etc / "group").write_text("\n".join(group_lines) + "\n")

    gshadow = etc / "gshadow"
    if gshadow.exists():
        lines = [
            line
            for line in gshadow.read_text().splitlines()
            if line.split(":")[0] not in dropped | replaced
        ]
        lines += [f"{name}:!::{members}" for name, _, members in MACOS_GROUPS]
        gshadow.write_text("\n".join(lines) + "\n")


def _add_admin(etc):
    with open(etc / "passwd", "a") as passwd:
        passwd.write(f"admin:x:{ADMIN_UID}:{STAFF_GID}:Administrator:/Users/admin:/bin/bash\n")
    # '*': no password to log in with, yet not locked, so key logins work.
    with open(etc / "shadow", "a") as shadow:
        shadow.write("admin:*:19000:0:99999:7:::\n")
    sudoers = etc / "sudoers.d/edge-lab-admin"
    sudoers.write_text(
        "# The lab's administrator, as on a Mac set up for Ansible.\n"
        "admin ALL=(ALL) NOPASSWD: ALL\n"
    )
    os.chmod(sudoers, 0o440)


def _make_etc(host):
    etc = host.dir / "etc"
    staging = host.dir / "etc.partial"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree("/etc", staging, symlinks=True)
    _rewrite_groups(staging)
    _add_admin(staging)
    (staging / "hostname").write_text(host.name + "\n")
    for key in staging.glob("ssh/ssh_host_*"):
        key.unlink()
    # The machine's sshd drop-ins are not the host's: its sshd_config is complete.
    shutil.rmtree(staging / "ssh/sshd_config.d", ignore_errors=True)
    os.rename(staging, etc)


def _host_keys(host):
    """Fresh host keys per host (``ssh-keygen -A`` writes below a prefix's etc/ssh)."""
    etc_ssh = host.dir / "etc/ssh"
    if not (etc_ssh / "ssh_host_ed25519_key").exists():
        subprocess.run(["ssh-keygen", "-A", "-f", str(host.dir)], check=True, capture_output=True)


def _write_sshd_config(host):
    (host.dir / "etc/ssh/sshd_config").write_text(
        f"# sshd of lab host {host.name}; written by edge-lab up.\n"
        f"ListenAddress {host.address}:22\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "HostKey /etc/ssh/ssh_host_ecdsa_key\n"
        "HostKey /etc/ssh/ssh_host_rsa_key\n"
        "PidFile /private/var/run/sshd.pid\n"
        # PAM opens the login session (limits, environment) so that sudo behaves as on a Mac.
        "UsePAM yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin no\n"
        "AuthorizedKeysFile .ssh/authorized_keys\n"
        "PrintMotd no\n"
        "AcceptEnv LANG LC_*\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    hosts_file = host.dir / "etc/hosts"
    entry = f"{host.address}\t{host.name}"
    lines = [line for line in hosts_file.read_text().splitlines() if host.name not in line]
    hosts_file.write_text("\n".join(lines + [entry]) + "\n")


def _make_template(host):
    template = host.dir / TEMPLATE
    for folder in TEMPLATE_FOLDERS:
        _mkdir(template / folder, 0o700 if folder.startswith("Library") else 0o755)


def _copy_template(host, home, uid, gid):
    """Populate a home folder the way createhomedir does: copy the template, then chown."""
    shutil.copytree(host.dir / TEMPLATE, home, dirs_exist_ok=True)
    for path in [home, *home.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(home, 0o750)


def _make_admin_home(host, public_key):
    home = host.dir / "Users/admin"
    if not home.exists():
        _copy_template(host, home, ADMIN_UID, STAFF_GID)
    ssh = home / ".ssh"
    _mkdir(ssh, 0o700, ADMIN_UID, STAFF_GID)
    keys = ssh / "authorized_keys"
    keys.write_text(public_key)
    os.chown(keys, ADMIN_UID, STAFF_GID)
    os.chmod(keys, 0o600)


def set_clt(host, installed):
    """Install or remove the Command Line Tools' python3 (a link to the machine's 3.9)."""
    link = host.dir / CLT_PYTHON
    if installed:
        _mkdir(link.parent.parent.parent.parent, 0o755)  # CommandLineTools
        for parent in (link.parent.parent, link.parent):
            _mkdir(parent, 0o755)
        if not link.is_symlink():
            os.symlink(PYTHON39, link)
    elif link.is_symlink() or link.exists():
        link.unlink()


def _write_wrappers(host):
    python = venv_python()
    for folder, names in STANDINS.items():
        target = host.dir / ".overlay" / folder.replace("/", "-")
        _mkdir(target)
        for name in names:
            module = name.replace("-", "_")
            script = target / name
            script.write_text(
                f"#!{python} -I\n"
                f"# macOS's {name}, played by the lab.\n"
                "import sys\n"
                f"from edge_lab.standins.{module} import main\n"
                "sys.exit(main())\n"
            )
            os.chmod(script, 0o755)
    stub = host.dir / ".overlay/usr-bin/python3"
    stub.write_text(PYTHON3_STUB)
    os.chmod(stub, 0o755)


def prepare(host, public_key):
    """Create the host's folders (once) and refresh what ``up`` owns (config, key, stand-ins).

    A host made before keeps its users, homes and state, as a Mac keeps its disk.
    """
    _mkdir(host.dir, 0o755)
    if not (host.dir / "etc").exists():
        _make_etc(host)
    # macOS reads log rotation rules from here; Debian's /etc has no such folder.
    _mkdir(host.dir / "etc/newsyslog.d")
    _host_keys(host)
    _write_sshd_config(host)
    _mkdir(host.dir / "Users")
    _mkdir(host.dir / "Users/Shared", 0o1777)
    for folder in (
        "Library/LaunchAgents",
        "Library/LaunchDaemons",
        "Library/Logs",
        "Library/Preferences",
        "Library/Application Support",
    ):
        _mkdir(host.dir / folder)
    _mkdir(host.dir / "private/var/run/sshd")
    _mkdir(host.dir / "private/var/run/edge-lab")
    _mkdir(host.dir / "private/var/db/edge-lab")
    _mkdir(host.dir / "private/var/log")
    _mkdir(host.dir / "private/var/edge-lab/wheelhouse")
    _mkdir(host.dir / "private/tmp", 0o1777)
    _mkdir(host.dir / "usr/local")
    # Traversable by everyone: the host's users run Python from /root/.pyenv.
    _mkdir(host.dir / "root", 0o711)
    _make_template(host)
    _make_admin_home(host, public_key)
    tcc.ensure_db(host.dir / tcc.SYSTEM_DB)
    state = hoststate.update(host.dir, lambda state: None)
    set_clt(host, state["clt"])
    _write_wrappers(host)
    (host.dir / "private/var/run/edge-lab/init.ready").unlink(missing_ok=True)


# ---------------------------------------------------------------- processes


def _alive(pid):
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _pid_ns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _child_of(parent, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{parent}\n" in status:
                return int(entry.name)
        time.sleep(0.05)
    return None


def read_record(host):
    try:
        return json.loads(host.record.read_text())
    except (FileNotFoundError, ValueError):
        return None


def is_running(host):
    record = read_record(host)
    return (
        bool(record)
        and _alive(record["init_pid"])
        and (_pid_ns(record["init_pid"]) == record["pid_ns"])
    )


def start(host, wheelhouse, shared_dirs):
    """Start the host's namespaces and init; returns once the init runs (not yet SSH)."""
    argv = ["unshare", "--mount", "--pid", "--uts", "--fork", "--mount-proc"]
    argv += ["--propagation", "private", str(venv_python()), "-m", "edge_lab.hostinit"]
    argv += ["--host-dir", str(host.dir), "--name", host.name, "--wheelhouse", str(wheelhouse)]
    for name in shared_dirs:
        argv += ["--share", name]
    with open(host.log, "ab") as log:
        outer = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True
        )
    init_pid = _child_of(outer.pid, 5)
    if init_pid is None:
        outer.kill()
        raise LabError(f"{host.name} did not start its namespaces; see {host.log}")
    record = {
        "name": host.name,
        "address": host.address,
        "unshare_pid": outer.pid,
        "init_pid": init_pid,
        "pid_ns": _pid_ns(init_pid),
    }
    host.record.write_text(json.dumps(record) + "\n")
    return record


def wait_ready(host, ssh_command, timeout=SSH_WAIT_S):
    """Wait until the host's init is up and ``admin`` can log in over SSH."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not is_running(host):
            raise LabError(f"{host.name} stopped while starting; see {host.log}")
        if (host.dir / "private/var/run/edge-lab/init.ready").exists():
            probe = subprocess.run(
                ssh_command + ["true"], capture_output=True, text=True, timeout=10
            )
            if probe.returncode == 0:
                return
            last = probe.stderr.strip()
        time.sleep(0.3)
    raise LabError(
        f"{host.name} did not answer SSH on {host.address}:22 within {timeout} s "
        f"({last or 'no answer'}); see {host.log}"
    )


def stop(host, timeout=10):
    """Stop the host: its init ends every process of the namespace.

    Returns the PID namespace of a host that was running, None for one that was not.
    """
    record = read_record(host)
    if not record:
        return None
    init_pid = record["init_pid"]
    running = is_running(host)
    # A stopped process would hold the SIGTERM until the timeout; let a cut host end cleanly.
    restore(host)
    if running:
        os.kill(init_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(init_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(init_pid):
            os.kill(init_pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (_alive(init_pid) or _alive(record["unshare_pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    host.record.unlink(missing_ok=True)
    return record["pid_ns"] if running else None


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _cut_marker(host):
    return host.dir / "cut"


def is_cut(host):
    return _cut_marker(host).exists()


def cut(host, timeout=10):
    """Cut the host off as a Mac that lost its network or hung would be: every process of it
    (sshd, launchd, the relays) is stopped with SIGSTOP, so SSH connects but never answers.

    Processes forked while the signals go out are caught by the next pass; returns how many
    processes were frozen.
    """
    if not is_running(host):
        raise LabError(f"{host.name} is not running; run edge-lab up first")
    namespace = read_record(host)["pid_ns"]
    _cut_marker(host).write_text("frozen with SIGSTOP by edge-lab cut\n")
    deadline = time.monotonic() + timeout
    while True:
        running = [pid for pid in processes_in({namespace}) if _state(pid) not in ("T", "t", None)]
        if not running:
            return len(processes_in({namespace}))
        if time.monotonic() > deadline:
            raise LabError(
                f"processes {running} of {host.name} kept running after SIGSTOP; "
                f"run edge-lab restore {host.name} and try again"
            )
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)


def restore(host, settle=0.5, timeout=5):
    """Undo cut: every process of the host continues where it stopped.

    One pass of SIGCONT is not enough: sudo, seeing the command it runs stopped, stops itself
    once it runs again, after the pass that continued it. So passes go on until no process
    of the host has been stopped for `settle` seconds (at most `timeout`).
    """
    record = read_record(host)
    if record and is_running(host):
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < settle:
            stopped = [pid for pid in processes_in({record["pid_ns"]}) if _state(pid) in ("T", "t")]
            if stopped:
                quiet_since = time.monotonic()
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
    was_cut = is_cut(host)
    _cut_marker(host).unlink(missing_ok=True)
    return was_cut


def processes_in(pid_namespaces):
    """Live processes of the machine that belong to any of the given PID namespaces."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_ns(entry.name) in pid_namespaces and _alive(entry.name):
            found.append(int(entry.name))
    return found


def host_passwd(host):
    """The host's users, by short name: (uid, gid, home)."""
    users = {}
    for line in (host.dir / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 7:
            users[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
    return users


def check_machine():
    """Refuse to start when the machine lacks what every host needs."""
    if os.geteuid() != 0:
        raise LabError("edge-lab up must run as root (namespaces, mounts and sshd need it)")
    if not PYTHON39.exists():
        raise LabError(f"Python 3.9 is missing at {PYTHON39}; install it (pyenv install 3.9.18)")
    if not PYENV_ROOT.is_dir():
        raise LabError(f"{PYENV_ROOT} is missing; the hosts' Python comes from there")
    for tool in ("unshare", "nsenter", "pivot_root", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"'{tool}' is not installed; run make system-packages")
    if not Path("/usr/sbin/sshd").exists():
        raise LabError("/usr/sbin/sshd is missing; install openssh-server (make system-packages)")
