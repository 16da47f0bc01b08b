"""The relay's own time per send, beside osascript's.

Runs the relay's Sender (spawning osascript, then confirming the rows in chat.db) against a
stand-in osascript that costs a fixed time (50 ms by default) and writes the outgoing row as
Messages does. Relay overhead per send = wall time of the send - the stand-in's own run time
(measured inside it). Prints p50 and p99 of both.

    .venv/bin/python bench/send_overhead.py [--sends 200] [--cost-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "files/relay/src"))

from edge_relay.chatdb import ChatDB  # noqa: E402
from edge_relay.sender import Sender  # noqa: E402

SCHEMA = ROOT / "lab/edge_lab/data/chat_db_schema.sql"
HANDLE = "+15550001111"

STANDIN = """#!{python}
import json, sqlite3, sys, time, uuid
started = time.monotonic()
time.sleep({cost})
conn = sqlite3.connect({chat_db!r})
with conn:
    for value in sys.argv[5::2]:
        rowid = conn.execute(
            "INSERT INTO message (guid, text, handle_id, service, date, is_from_me, is_sent) "
            "VALUES (?, ?, 1, 'iMessage', 0, 1, 1)", (str(uuid.uuid4()), value)).lastrowid
        conn.execute("INSERT INTO chat_message_join (chat_id, message_id) VALUES (1, ?)",
                     (rowid,))
with open({times!r}, "a") as f:
    f.write(json.dumps(time.monotonic() - started) + "\\n")
"""


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def bench(sends: int, cost_s: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        chat_db = os.path.join(folder, "chat.db")
        times = os.path.join(folder, "times.jsonl")
        with sqlite3.connect(chat_db) as conn:
            conn.executescript(SCHEMA.read_text())
            conn.execute("INSERT INTO handle (id, service) VALUES (?, 'iMessage')", (HANDLE,))
            conn.execute(
                "INSERT INTO chat (guid, style, chat_identifier) VALUES (?, 45, ?)",
                (f"any;-;{HANDLE}", HANDLE),
            )
        standin = os.path.join(folder, "osascript")
        Path(standin).write_text(
            STANDIN.format(python=sys.executable, cost=cost_s, chat_db=chat_db, times=times)
        )
        os.chmod(standin, 0o755)
        sender = Sender(standin, ChatDB(chat_db), confirm_s=5.0, confirm_poll_s=0.01)

        walls = []
        for n in range(sends):
            started = time.monotonic()
            outcome = await sender.send("chat", f"any;-;{HANDLE}", [f"bubble {n}"])
            walls.append(time.monotonic() - started)
            assert outcome.status == "delivered", outcome.detail
        own = [json.loads(line) for line in Path(times).read_text().splitlines()]

    overhead = [wall - inside for wall, inside in zip(walls, own)]
    print(f"{sends} sends, osascript stand-in costing {cost_s * 1000:.0f} ms")
    for name, values in (("osascript", own), ("send (wall)", walls), ("relay", overhead)):
        print(
            f"  {name:12} p50 {percentile(values, 0.5) * 1000:7.1f} ms   "
            f"p99 {percentile(values, 0.99) * 1000:7.1f} ms   "
            f"mean {statistics.mean(values) * 1000:7.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--cost-ms", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(bench(args.sends, args.cost_ms / 1000.0))


if __name__ == "__main__":
    main()
