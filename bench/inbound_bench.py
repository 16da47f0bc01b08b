"""Benchmarks of the relay's inbound side against a real chat.db and the reference backend.

Each figure comes from real processes: `edge-relay run` and `edge-backend serve` on free
127.0.0.1 ports, a chat.db in WAL mode written the way Messages writes it (one connection kept
open, a message and its chat_message_join in one transaction). The relay runs on the Python of
.venv39 when there is one, the Python 3.9 a Mac runs it on (its watchdog release reports a
change of a file's attributes as a modification, as newer ones do not). Run from the
repository root:

    .venv/bin/python bench/inbound_bench.py [--only latency,idle,drain,outage,kill] [--idle-s 60]
        [--outage-s 120] [--relay-python PATH]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "lab" / "edge_lab" / "data" / "chat_db_schema.sql"
TOKEN = "bench-" + uuid.uuid4().hex
APPLE_EPOCH_UNIX = 978307200
TICKS = os.sysconf("SC_CLK_TCK")
MAC_PYTHON = ROOT / ".venv39" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class Messages:
    """chat.db as Messages keeps it: WAL, one writer connection held open."""

    def __init__(self, path: Path):
        # The outage run writes from a thread of its own, one writer at a time.
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.executescript(SCHEMA.read_text())
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.chats: dict = {}

    def _chat(self, handle: str) -> tuple:
        if handle not in self.chats:
            c = self.conn
            handle_id = c.execute(
                "INSERT INTO handle (id, service) VALUES (?, 'iMessage')", (handle,)
            ).lastrowid
            chat_id = c.execute(
                "INSERT INTO chat (guid, style, chat_identifier, service_name) "
                "VALUES (?, 45, ?, 'iMessage')",
                (f"any;-;{handle}", handle),
            ).lastrowid
            self.chats[handle] = (handle_id, chat_id)
        return self.chats[handle]

    def incoming(self, handle: str, text: str) -> tuple:
        """Writes one message; returns its guid and the time its commit returned."""
        handle_id, chat_id = self._chat(handle)
        guid = str(uuid.uuid4()).upper()
        date = int((time.time() - APPLE_EPOCH_UNIX) * 1e9)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        rowid = c.execute(
            "INSERT INTO message (guid, text, handle_id, service, date, is_from_me) "
            "VALUES (?, ?, ?, 'iMessage', ?, 0)",
            (guid, text, handle_id, date),
        ).lastrowid
        c.execute(
            "INSERT INTO chat_message_join (chat_id, message_id) VALUES (?, ?)", (chat_id, rowid)
        )
        c.execute("COMMIT")
        return guid, time.time()

    def close(self) -> None:
        """Messages quits: its connection closes (SQLite removes the WAL when the last does)."""
        self.conn.close()


class Backend:
    """`edge-backend serve` on a free port with a temporary SQLite database."""

    def __init__(self, folder: Path, delay_ms: int = 0):
        self.db = folder / "backend.db"
        self.dsn = f"sqlite:///{self.db}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.delay_ms = delay_ms
        self.log = folder / "backend.log"
        self.admin = folder / "admin-token"
        self.admin.write_text("admin-" + uuid.uuid4().hex + "\n")
        self.admin.chmod(0o600)
        python = sys.executable
        subprocess.run([python, "-m", "edge_backend", "init-db", "--dsn", self.dsn], check=True)
        stamp = datetime.now(timezone.utc).isoformat()
        conn = sqlite3.connect(str(self.db))
        with conn:
            conn.execute(
                "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, state, "
                "token_hash, created_at, updated_at) VALUES "
                "('sage-01', 'sage', '+15551230001', 'sage-01', 'active', ?, ?, ?)",
                (hashlib.sha256(TOKEN.encode()).hexdigest(), stamp, stamp),
            )
        conn.close()
        self.proc = None

    def start(self) -> None:
        command = [sys.executable, "-m", "edge_backend", "serve", "--dsn", self.dsn]
        command += ["--port", str(self.port), "--admin-token-file", str(self.admin)]
        command += ["--response-delay-ms", str(self.delay_ms)]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return True
            except OSError:
                return False

        wait_until(up, 20, "edge-backend to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            self.proc = None

    def query(self, sql: str, params: tuple = ()) -> list:
        conn = sqlite3.connect(str(self.db), timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def received(self) -> dict:
        return dict(self.query("SELECT guid, received_at FROM inbound_events"))

    def resent(self) -> int:
        """Events the relay sent more than once (the backend took each only once)."""
        total = new = 0
        for line in self.log.read_text().splitlines():
            if " inbound: " in line:
                words = line.split(" inbound: ")[1].split()
                total += int(words[0])
                new += int(words[2])
        return total - new

    def replies_in_order(self) -> tuple:
        """(chats checked, chats whose replies came out of order) from the reply commands."""
        rows = self.query("SELECT payload FROM edge_commands ORDER BY rowid")
        seen: dict = {}
        for (payload,) in rows:
            command = json.loads(payload)
            number = int(command["bubbles"][0].rsplit(" ", 1)[1])
            seen.setdefault(command["chat_guid"], []).append(number)
        return len(seen), sum(1 for numbers in seen.values() if numbers != sorted(numbers))


class Relay:
    """`edge-relay run` as its own process."""

    def __init__(self, folder: Path, chat_db: Path, backend_url: str, python: str):
        self.python = python
        token = folder / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        # Replies go to an osascript that takes the request and writes nothing: each send
        # ends "uncertain" once, and never weighs on the inbound figures.
        osascript = folder / "osascript"
        osascript.write_text("#!/bin/sh\nexit 0\n")
        osascript.chmod(0o755)
        config = {
            "shard_id": "sage-01",
            "persona": "sage",
            "phone_number": "+15551230001",
            "backend": {"url": backend_url, "token_file": str(token), "timeout_s": 5},
            "chat_db": str(chat_db),
            "state_dir": str(folder / "state"),
            "health": {"host": "127.0.0.1", "port": free_port()},
            "osascript": str(osascript),
            "log_level": "WARNING",
        }
        self.config = folder / "config.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.config.chmod(0o600)
        self.health = f"http://127.0.0.1:{config['health']['port']}/health"
        self.metrics = f"http://127.0.0.1:{config['health']['port']}/metrics"
        self.log = folder / "relay.log"
        self.proc = None

    def start(self) -> None:
        command = [self.python, "-m", "edge_relay", "run", "--config", str(self.config)]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)

        def registered() -> bool:
            try:
                urllib.request.urlopen(self.health, timeout=1).read()
            except urllib.error.HTTPError as error:
                return b'"registered": {"ok": true' in error.read()
            except OSError:
                return False
            return True

        wait_until(registered, 20, "the relay to register")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
            self.proc = None

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def reads(self):
        """Reads of chat.db since the relay started, from /metrics (None: an older release)."""
        text = urllib.request.urlopen(self.metrics, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("edge_relay_chatdb_reads_total "):
                return float(line.split()[1])
        return None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def received_at(stamp: str) -> float:
    return (
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    )


def setup(folder: Path, python: str, delay_ms: int = 0) -> tuple:
    messages = Messages(folder / "chat.db")
    backend = Backend(folder, delay_ms)
    backend.start()
    relay = Relay(folder, folder / "chat.db", backend.url, python)
    relay.start()
    time.sleep(1.0)  # the first start has recorded "now"
    return messages, backend, relay


def bench_latency(folder: Path, python: str, count: int = 200) -> None:
    messages, backend, relay = setup(folder, python)
    try:
        written = {}
        for n in range(count):
            guid, at = messages.incoming("+15550000001", f"latency {n}")
            written[guid] = at
            time.sleep(0.05)
        wait_until(lambda: len(backend.received()) >= count, 30, "every message")
        received = backend.received()
        delays = sorted((received_at(received[g]) - at) * 1000 for g, at in written.items())
        p50 = statistics.median(delays)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(
            f"latency: {count} messages, p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
            f" max {delays[-1]:.1f} ms"
            " (targets: p50 <= 50, p99 <= 200)"
        )
        print(f"memory: VmRSS {relay.rss_mb():.1f} MB after {count} messages (target <= 50)")
    finally:
        relay.stop()
        backend.stop()


def idle_figures(relay: Relay, seconds: float) -> tuple:
    """(% of a core, reads of chat.db per minute or None) over `seconds` with nothing arriving."""
    cpu, reads, start = relay.cpu_s(), relay.reads(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    share = 100 * (relay.cpu_s() - cpu) / elapsed
    after = relay.reads()
    per_minute = None if reads is None or after is None else 60 * (after - reads) / elapsed
    return share, per_minute


def bench_idle(folder: Path, python: str, seconds: float) -> None:
    """Nothing arriving, first while Messages holds chat.db open, then once it has quit.

    Without Messages' connection, the relay's own connections are the only ones on chat.db:
    what they do to the WAL's files must not wake the relay again.
    """
    messages, backend, relay = setup(folder, python)
    try:
        time.sleep(5)  # past start-up
        held, held_reads = idle_figures(relay, seconds)
        messages.close()
        time.sleep(2)  # what the close itself changed has been read
        alone, alone_reads = idle_figures(relay, seconds)

        def per_minute(reads) -> str:
            return "not reported" if reads is None else f"{reads:.0f}"

        print(
            f"idle: {held:.2f}% of a core over {seconds:.0f} s while Messages holds chat.db"
            f" open, {alone:.2f}% over {seconds:.0f} s with no other connection on it"
            f" (target <= 0.5% each); chat.db reads per minute {per_minute(held_reads)}"
            f" and {per_minute(alone_reads)}; VmRSS {relay.rss_mb():.1f} MB (target <= 50)"
        )
    finally:
        relay.stop()
        backend.stop()


def write_backlog(messages: Messages, count: int, chats: int, offset: int = 0) -> None:
    for n in range(offset, offset + count):
        messages.incoming(f"+1555100{n % chats:04d}", f"backlog {n // chats}")


def bench_drain(folder: Path, python: str, count: int = 1000, chats: int = 50) -> None:
    messages, backend, relay = setup(folder, python, delay_ms=250)
    try:
        relay.stop()
        write_backlog(messages, count, chats)
        started = time.monotonic()
        relay.start()
        wait_until(lambda: len(backend.received()) >= count, 120, "the backlog")
        elapsed = time.monotonic() - started
        checked, disordered = backend.replies_in_order()
        print(
            f"drain: {count} messages over {chats} chats against a 250 ms backend in"
            f" {elapsed:.2f} s = {count / elapsed:.0f} messages/s (target >= 100),"
            f" {checked} chats checked, {disordered} out of order"
        )
    finally:
        relay.stop()
        backend.stop()


class Traffic:
    """Incoming messages at a steady rate over several chats, from a thread of their own.

    Each text ends with the message's number within its chat, so the order of the replies
    per chat can be checked; the number before it is unique, so a reply given twice shows.
    """

    def __init__(self, messages: Messages, chats: int, per_second: float):
        self.messages = messages
        self.chats = chats
        self.interval = 1.0 / per_second
        self.written: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            n = len(self.written)
            guid, _ = self.messages.incoming(
                f"+1555200{n % self.chats:04d}", f"traffic {n} {n // self.chats}"
            )
            self.written.append(guid)
            # Paced from the start, so a slow write does not lower the rate.
            self._stop.wait(max(0.0, started + (n + 1) * self.interval - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def bench_outage(
    folder: Path,
    python: str,
    outage_s: float,
    per_second: float = 10.0,
    chats: int = 50,
    lead_s: float = 5.0,
) -> int:
    """The backend down for `outage_s` while messages keep arriving, before, during and after.

    Returns 1 when a message was lost, processed twice or replied to out of order.
    """
    messages, backend, relay = setup(folder, python)
    traffic = Traffic(messages, chats, per_second)
    try:
        traffic.start()
        time.sleep(lead_s)
        backend.stop()
        down_from = len(traffic.written)
        time.sleep(outage_s)
        during = len(traffic.written) - down_from
        backend.start()
        back_at = time.time()
        backlog = list(traffic.written)
        time.sleep(lead_s)
        traffic.stop()
        written = list(traffic.written)
        wait_until(lambda: len(backend.received()) >= len(written), 120 + outage_s, "every message")
        # Replies to the last batches are queued a moment after their answer.
        wait_until(
            lambda: backend.query("SELECT COUNT(*) FROM edge_commands")[0][0] >= len(written),
            30,
            "a reply to every message",
        )
        time.sleep(1)
        received = backend.received()
        lost = len(set(written) - set(received))
        # What piled up while the backend was down, cleared after it came back.
        caught_up = max(received_at(received[g]) for g in backlog if g in received) - back_at
        replies = collections.Counter(
            json.loads(payload)["bubbles"][0]
            for (payload,) in backend.query("SELECT payload FROM edge_commands")
        )
        twice = sum(1 for count in replies.values() if count > 1)
        checked, disordered = backend.replies_in_order()
        print(
            f"outage: backend down {outage_s:.0f} s under traffic ({per_second:g} messages/s over"
            f" {chats} chats); {len(written)} written, {during} of them during the outage;"
            f" {len(set(written) & set(received))} received, {lost} lost,"
            f" {twice} processed twice, {backend.resent()} resent by the relay,"
            f" {disordered} of {checked} chats out of order;"
            f" the {len(backlog)} written until the backend came back were all in"
            f" {caught_up:.1f} s after it"
        )
        return 1 if lost or twice or disordered else 0
    finally:
        traffic.stop()
        relay.stop()
        backend.stop()


def bench_kill(folder: Path, python: str, count: int = 1000, chats: int = 50) -> None:
    messages, backend, relay = setup(folder, python)
    try:
        write_backlog(messages, count // 2, chats)
        relay.stop(signal.SIGKILL)
        write_backlog(messages, count // 2, chats, offset=count // 2)
        relay.start()
        wait_until(lambda: len(backend.received()) >= count, 120, "every message")
        time.sleep(1)
        replies = backend.query("SELECT COUNT(*) FROM edge_commands")[0][0]
        checked, disordered = backend.replies_in_order()
        print(
            f"kill -9: {len(backend.received())} of {count} received, {replies} replies"
            f" (one per message: none processed twice), {backend.resent()} resent by the relay,"
            f" {disordered} of {checked} chats out of order"
        )
    finally:
        relay.stop()
        backend.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="latency,idle,drain,outage,kill")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument(
        "--outage-s", type=float, default=120.0, help="how long the backend stays down (outage)"
    )
    parser.add_argument(
        "--relay-python",
        default=str(MAC_PYTHON) if MAC_PYTHON.exists() else sys.executable,
        help="the interpreter that runs edge-relay (default: .venv39's, the Mac's Python 3.9)",
    )
    args = parser.parse_args()
    python = args.relay_python
    runs = {
        "latency": lambda folder: bench_latency(folder, python),
        "idle": lambda folder: bench_idle(folder, python, args.idle_s),
        "drain": lambda folder: bench_drain(folder, python),
        "outage": lambda folder: bench_outage(folder, python, args.outage_s),
        "kill": lambda folder: bench_kill(folder, python),
    }
    if args.outage_s <= 0:
        parser.error(f"--outage-s must be a number of seconds above 0, not {args.outage_s:g}")
    if not os.access(python, os.X_OK):
        parser.error(f"--relay-python {python} is not an executable file")
    names = args.only.split(",")
    for name in names:
        if name not in runs:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(runs)}")
    failed = 0
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edge-bench-{name}-") as folder:
            failed |= runs[name](Path(folder)) or 0
    return failed


if __name__ == "__main__":
    sys.exit(main())
