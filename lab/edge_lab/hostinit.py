"""PID 1 of a lab host: builds the host's file system view, then runs sshd and launchd.

Started by ``edge-lab up`` inside fresh mount, PID and UTS namespaces. The host's root is a
tmpfs holding bind mounts of the machine's system folders (``/usr``, ``/var``, ...) and of the
host's own folders (``/etc``, ``/Users``, ``/Library``, ``/System``, ``/private``, ``/root``),
so nothing is created on the machine's own root. When this process ends, the kernel ends
every process of the host and its mounts disappear with the namespace.
"""

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Machine folders a host shares read-write as they are (software, devices, the repository).
SHARED_DIRS = ("usr", "var", "opt", "home", "srv", "dev", "sys")
# The host's own folders, from its directory under .lab/hosts.
OWN_DIRS = ("etc", "Users", "Library", "System", "private", "root")
LAUNCHD_SOCKET = "/private/var/run/edge-lab/launchd.sock"
STOP_GRACE_S = 3.0


def _run(*argv):
    subprocess.run(argv, check=True)


def _bind(source, target, *, recursive=False, read_only=False):
    _run("mount", "--rbind" if recursive else "--bind", str(source), str(target))
    if read_only:
        _run("mount", "-o", "remount,bind,ro", str(target))


def build_root(host_dir, wheelhouse, extra_dirs):
    """Assemble the host's root under ``host_dir/.rootfs`` and pivot into it."""
    new_root = host_dir / ".rootfs"
    new_root.mkdir(exist_ok=True)
    _run("mount", "--make-rprivate", "/")
    _run("mount", "-t", "tmpfs", "-o", "mode=0755", "edge-lab-root", str(new_root))

    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        machine = Path("/") / name
        if machine.is_symlink():
            os.symlink(os.readlink(machine), new_root / name)
    for name in SHARED_DIRS:
        if (Path("/") / name).is_dir() and not (new_root / name).exists():
            (new_root / name).mkdir()
            _bind(Path("/") / name, new_root / name, recursive=True)

    # Python 3.9 and the lab's own Python live under the machine's /root/.pyenv; the machine's
    # /root is private, so the pyenv tree is bound read-only into the host's /root.
    (host_dir / "root/.pyenv").mkdir(exist_ok=True)
    _bind("/root/.pyenv", host_dir / "root/.pyenv", read_only=True)
    wheelhouse_mount = host_dir / "private/var/edge-lab/wheelhouse"
    wheelhouse_mount.mkdir(parents=True, exist_ok=True)
    _bind(wheelhouse, wheelhouse_mount, read_only=True)
    for name in OWN_DIRS:
        (new_root / name).mkdir()
        _bind(host_dir / name, new_root / name, recursive=True)
    # /usr is the machine's, but /usr/local is each Mac's own (releases live there).
    _bind(host_dir / "usr/local", new_root / "usr/local")

    # As on macOS, /tmp and /var/run belong to /private; Linux programs look in /run.
    os.symlink("private/tmp", new_root / "tmp")
    (new_root / "run").mkdir()
    _bind(host_dir / "private/var/run", new_root / "run")
    (new_root / "proc").mkdir()
    _run("mount", "-t", "proc", "proc", str(new_root / "proc"))

    # The lab's code and Python, at the same paths as on the machine (the stand-ins' scripts
    # name them). A folder under /tmp lands in the host's /private/tmp, as it would on a Mac.
    for folder in map(Path, extra_dirs):
        if folder.parts[1] in SHARED_DIRS:
            continue
        target = new_root / folder.relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        _bind(folder, target, recursive=True)

    # The stand-ins go where macOS has the real commands, over the machine's own ones.
    overlay = host_dir / ".overlay"
    for folder in ("usr/bin", "usr/sbin"):
        standins = overlay / folder.replace("/", "-")
        options = f"lowerdir={standins}:/{folder}"
        _run("mount", "-t", "overlay", "-o", options, "edge-lab-standins", str(new_root / folder))

    old = new_root / ".oldroot"
    old.mkdir()
    _run("pivot_root", str(new_root), str(old))
    os.chdir("/")
    _run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")


class Supervisor:
    """Keeps sshd and launchd running and reaps every orphan of the host."""

    def __init__(self, services):
        self.services = services
        self.children = {}
        self.stopping = False

    def start(self, name):
        argv = self.services[name]
        self.children[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        print(f"host init: started {name} (pid {self.children[name].pid})", flush=True)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for name, child in list(self.children.items()):
                if child.pid == pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    print(f"host init: {name} exited ({child.returncode})", flush=True)
                    if not self.stopping:
                        time.sleep(1)
                        self.start(name)

    def run(self):
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for name in self.services:
            self.start(name)
        Path("/private/var/run/edge-lab/init.ready").touch()
        while not self.stopping:
            self.reap()
            time.sleep(0.2)
        self.shutdown()

    def _stop(self, signum, frame):
        self.stopping = True

    def shutdown(self):
        # kill(-1) from a namespace's init reaches every other process of that namespace.
        print("host init: stopping every process of the host", flush=True)
        try:
            os.kill(-1, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="edge-lab-host-init")
    parser.add_argument("--host-dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--wheelhouse", type=Path, required=True)
    parser.add_argument(
        "--share", action="append", default=[], help="machine folder to show at the same path"
    )
    args = parser.parse_args(argv)
    if os.getpid() != 1:
        sys.exit("edge-lab host init must run as PID 1 of a new PID namespace (edge-lab up)")

    socket.sethostname(args.name)
    build_root(args.host_dir.resolve(), args.wheelhouse.resolve(), args.share)
    Path(LAUNCHD_SOCKET).parent.mkdir(parents=True, exist_ok=True)

    services = {"sshd": ["/usr/sbin/sshd", "-D", "-e"]}
    if importlib.util.find_spec("edge_lab.launchd") is not None:
        services["launchd"] = [sys.executable, "-m", "edge_lab.launchd", "--socket", LAUNCHD_SOCKET]
    else:
        print("host init: edge_lab.launchd is not installed; no launchd in this host", flush=True)
    Supervisor(services).run()


if __name__ == "__main__":
    main()
