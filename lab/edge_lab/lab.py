"""The whole lab: hosts, SSH access, wheelhouse, inventory, backend and carrier."""

import errno
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import hosts
from .layout import (
    CANARY_HANDLE,
    PYTHON39,
    Host,
    LabError,
    backend_port,
    health_port_base,
    inventory_dir,
    known_hosts,
    lab_dir,
    venv_python,
)

RELAY_REQUIREMENTS = ("aiohttp", "pyyaml", "watchdog", "prometheus-client", "pytypedstream")
SERVICE_WAIT_S = 20


# ---------------------------------------------------------------- small helpers


def _port_free(address, port):
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers themselves do: connections of a previous run left in TIME_WAIT do not
    # keep a port busy, only a listener does.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((address, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        probe.close()
    return True


def _port_open(address, port, timeout=0.5):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _start_time(pid):
    """The kernel's start time of a process, so a recycled pid is not taken for ours."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _log_tail(path, lines=5):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def shared_dirs():
    """Machine folders the hosts need besides the system ones: the lab's code and Python.

    Exact folders, not their top-level parents: a clone under /tmp must not hide the host's own
    /tmp (which is /private/tmp, as on macOS).
    """
    repo = Path(__file__).resolve().parents[2]
    prefix = Path(sys.prefix).resolve()
    wanted = [repo] if prefix.is_relative_to(repo) else [repo, prefix]
    return [str(path) for path in wanted]


# ---------------------------------------------------------------- SSH access


def ssh_key(lab):
    return lab / "ssh/id_ed25519"


def ssh_config_path(lab):
    return lab / "ssh_config"


def ssh_command(lab, host):
    return [
        "ssh",
        "-F",
        str(ssh_config_path(lab)),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        host.name,
    ]


def _ensure_ssh(lab, all_hosts):
    key = ssh_key(lab)
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-lab", "-f", str(key)],
            check=True,
        )
    blocks = ["# Written by edge-lab up: the lab's hosts.\n"]
    for host in all_hosts:
        blocks.append(
            f"Host {host.name} {host.address}\n"
            f"    HostName {host.address}\n"
            "    User admin\n"
            f"    IdentityFile {key}\n"
            "    IdentitiesOnly yes\n"
            # Hosts get new keys when remade; their identity is their loopback address.
            "    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile /dev/null\n"
            "    LogLevel ERROR\n"
        )
    ssh_config_path(lab).write_text("\n".join(blocks))
    return Path(str(key) + ".pub").read_text()


# ---------------------------------------------------------------- wheelhouse


def ensure_wheelhouse(lab):
    """Wheels of the relay's dependencies for Python 3.9, downloaded once."""
    wheelhouse = lab / "wheelhouse"
    marker = wheelhouse / ".complete"
    wanted = "\n".join(RELAY_REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    print(f"edge-lab: downloading the relay's wheels for Python 3.9 into {wheelhouse}")
    result = subprocess.run(
        [
            str(PYTHON39),
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            str(wheelhouse),
            *RELAY_REQUIREMENTS,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise LabError(
            "could not download the relay's wheels with Python 3.9 "
            f"({result.stderr.strip().splitlines()[-1:]}); check the package index "
            "is reachable and run edge-lab up again"
        )
    marker.write_text(wanted)
    return wheelhouse


# ---------------------------------------------------------------- inventory


def shard_user_password(lab):
    """The password the lab's shard users get, made once per lab and kept in a 0600 file."""
    path = lab / "shard-user-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
    return path.read_text().strip()


def write_inventory(lab, all_hosts):
    folder = inventory_dir()
    (folder / "group_vars").mkdir(parents=True, exist_ok=True)
    key = str(ssh_key(lab))
    members = {}
    for host in all_hosts:
        members[host.name] = {
            "ansible_host": host.address,
            "ansible_user": "admin",
            "ansible_ssh_private_key_file": key,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become": True,
            # A host that stops answering (edge-lab cut) fails its task as unreachable in
            # about 15 s instead of hanging a connection Ansible keeps open.
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o ServerAliveInterval=5 -o ServerAliveCountMax=3",
            "edge_relay_health_port_base": health_port_base() + 100 * host.index,
        }
    header = "# Generated by edge-lab up; edits are overwritten.\n"
    inventory = {"all": {"children": {"mac_minis": {"hosts": members}}}}
    (folder / "hosts.yml").write_text(header + yaml.safe_dump(inventory, sort_keys=False))
    group_vars = {
        "edge_backend_url": f"http://127.0.0.1:{backend_port()}",
        "edge_backend_dsn": f"sqlite://{lab / 'backend.db'}",
        "edge_backend_admin_token_file": str(lab / "admin-token"),
        "edge_canary_handle": CANARY_HANDLE,
        "edge_relay_pip_find_links": "/private/var/edge-lab/wheelhouse",
        # Lab hints in the playbooks' instructions, and the shard users' login password (a
        # real fleet keeps it in Ansible Vault; the lab makes one and keeps it in the lab).
        "edge_lab": True,
        "edge_shard_user_password": shard_user_password(lab),
    }
    # It holds the shard users' password: readable by this user alone, as the lab's own copy.
    group_vars_file = folder / "group_vars/all.yml"
    group_vars_file.touch(mode=0o600)
    group_vars_file.chmod(0o600)
    group_vars_file.write_text(header + yaml.safe_dump(group_vars, sort_keys=False))


# ---------------------------------------------------------------- backend and carrier


class Service:
    """A lab process outside the hosts (the backend, the carrier), tracked by a pid file."""

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.pid_file = lab / f"{name}.pid"
        self.log = lab / f"{name}.log"

    def pid(self):
        try:
            record = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if _start_time(record["pid"]) == record["start"]:
            return record["pid"]
        return None

    def start(self, argv):
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.lab),
                start_new_session=True,
            )
        record = {"pid": process.pid, "start": _start_time(process.pid)}
        self.pid_file.write_text(json.dumps(record) + "\n")
        return process

    def stop(self, timeout=10):
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _start_time(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if _start_time(pid) is not None:
                os.kill(pid, signal.SIGKILL)
                while _start_time(pid) is not None:
                    time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return pid


def backend_executable():
    found = venv_python().parent / "edge-backend"
    return found if found.exists() else None


def carrier_installed():
    return importlib.util.find_spec("edge_lab.carrier") is not None


def _start_backend(lab):
    service = Service(lab, "backend")
    port = backend_port()
    token = lab / "admin-token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    process = service.start(
        [
            str(backend_executable()),
            "serve",
            "--dsn",
            f"sqlite://{lab / 'backend.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-token-file",
            str(token),
        ]
    )
    deadline = time.monotonic() + SERVICE_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            service.pid_file.unlink(missing_ok=True)
            raise LabError(
                f"the backend exited at start ({_log_tail(service.log)}); see {service.log}"
            )
        if _port_open("127.0.0.1", port):
            return
        time.sleep(0.2)
    service.stop()
    raise LabError(
        f"the backend did not listen on 127.0.0.1:{port} within {SERVICE_WAIT_S} s; "
        f"see {service.log}"
    )


def _start_carrier(lab):
    service = Service(lab, "carrier")
    process = service.start([str(venv_python()), "-m", "edge_lab.carrier", "--lab-dir", str(lab)])
    time.sleep(0.5)
    if process.poll() is not None:
        service.pid_file.unlink(missing_ok=True)
        raise LabError(f"the carrier exited at start ({_log_tail(service.log)}); see {service.log}")


# ---------------------------------------------------------------- up, down, status


def up(count):
    if not 1 <= count <= 99:
        raise LabError(f"--hosts {count} is out of range; a lab has 1 to 99 hosts")
    hosts.check_machine()
    lab = lab_dir()
    lab.mkdir(parents=True, exist_ok=True)
    wanted = [Host(index, lab) for index in range(1, count + 1)]
    to_start = [host for host in wanted if not hosts.is_running(host)]

    for host in to_start:
        if not _port_free(host.address, 22):
            raise LabError(
                f"port 22 on {host.address} is already in use, so {host.name} cannot "
                "listen there; stop whatever listens (ss -ltnp) and run up again"
            )
    backend = Service(lab, "backend")
    start_backend = backend_executable() is not None and backend.pid() is None
    if start_backend and not _port_free("127.0.0.1", backend_port()):
        raise LabError(
            f"port {backend_port()} on 127.0.0.1 is already in use, so the backend "
            "cannot start; stop whatever listens there and run up again"
        )

    all_hosts = sorted({*wanted, *known_hosts(lab)}, key=lambda host: host.index)
    public_key = _ensure_ssh(lab, all_hosts)
    wheelhouse = ensure_wheelhouse(lab)

    started, services = [], []
    try:
        for host in to_start:
            hosts.prepare(host, public_key)
            hosts.start(host, wheelhouse, shared_dirs())
            started.append(host)
        for host in started:
            hosts.wait_ready(host, ssh_command(lab, host))
        if start_backend:
            services.append(backend)
            _start_backend(lab)
        carrier = Service(lab, "carrier")
        if carrier_installed() and carrier.pid() is None:
            services.append(carrier)
            _start_carrier(lab)
    except BaseException:
        for service in services:
            service.stop()
        for host in started:
            hosts.stop(host)
        raise

    write_inventory(lab, all_hosts)
    for host in wanted:
        note = "started" if host in started else "already up"
        print(f"{host.name}  {host.address}  {note}")
    if backend_executable() is None:
        print(
            "backend: edge-backend is not installed in this environment (pip install -e "
            "backend); the lab runs without it"
        )
    else:
        print(f"backend: http://127.0.0.1:{backend_port()}")
    if not carrier_installed():
        print("carrier: edge_lab.carrier is not installed; no phone network")
    print(f"inventory: {inventory_dir() / 'hosts.yml'}")


def down(purge=False):
    lab = lab_dir()
    namespaces = set()
    for host in known_hosts(lab):
        pid_ns = hosts.stop(host)
        if pid_ns:
            namespaces.add(pid_ns)
            print(f"{host.name}  stopped")
    leftovers, stopped = [], bool(namespaces)
    for name in ("carrier", "backend"):
        pid = Service(lab, name).stop()
        if pid is not None:
            stopped = True
            print(f"{name}  stopped")
            if _start_time(pid) is not None:
                leftovers.append(pid)
    if not stopped:
        print("nothing of the lab was running")
    leftovers += hosts.processes_in(namespaces)
    if leftovers:
        raise LabError(
            f"processes of the lab are still running after down: {leftovers}; "
            "stop them with kill and run down again"
        )
    if purge:
        shutil.rmtree(lab, ignore_errors=True)
        for generated in ("hosts.yml", "group_vars/all.yml"):
            (inventory_dir() / generated).unlink(missing_ok=True)
        print(f"removed {lab}")


def status():
    lab = lab_dir()
    rows = [("HOST", "ADDRESS", "INIT PID", "SSH")]
    for host in known_hosts(lab):
        record = hosts.read_record(host) if hosts.is_running(host) else None
        cut = record is not None and hosts.is_cut(host)
        reachable = record is not None and not cut and _ssh_banner(host.address)
        rows.append(
            (
                host.name,
                host.address,
                str(record["init_pid"]) if record else "-",
                "cut off" if cut else "yes" if reachable else "no",
            )
        )
    width = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width[index]) for index, cell in enumerate(row)).rstrip())
    backend = Service(lab, "backend").pid()
    if backend is None:
        print("backend: not running")
    else:
        listening = _port_open("127.0.0.1", backend_port())
        print(
            f"backend: pid {backend}, "
            f"{'listening on' if listening else 'not listening on'} 127.0.0.1:{backend_port()}"
        )
    carrier = Service(lab, "carrier").pid()
    print(f"carrier: pid {carrier}" if carrier else "carrier: not running")


def _ssh_banner(address):
    try:
        with socket.create_connection((address, 22), timeout=1) as conn:
            conn.settimeout(1)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def exec_in(host, argv, **run_args):
    """Run a command as root inside a running host (its mount, UTS and PID namespaces)."""
    if not hosts.is_running(host):
        raise LabError(f"{host.name} is not running; run edge-lab up first")
    init_pid = hosts.read_record(host)["init_pid"]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "USER": "root",
        "LOGNAME": "root",
    }
    return subprocess.run(
        ["nsenter", "--target", str(init_pid), "--mount", "--uts", "--pid", "--", *argv],
        env=env,
        cwd="/",
        **run_args,
    )
