"""`make demo`: the lab up, shard sage-01 added end to end, and a message round trip through it.

The person-only steps are played with the lab's commands when add_shard.yml stops for them, so
the demo also shows the playbook resuming where it stopped.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from edge_lab.layout import inventory_dir, lab_dir

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PERSONA, NUMBER, HOST = "sage", 1, "mini-01"
PHONE = "+15551230001"
USER = f"edge_{PERSONA}_{NUMBER:02d}"
SHARD = f"{PERSONA}-{NUMBER:02d}"
LAB_PHONE = "+15557654321"
REPLY_TIMEOUT_S = 60


def fail(problem: str) -> NoReturn:
    sys.exit(
        f"demo: {problem}\nWhat the lab started keeps running for a look: `make lab-down` stops it."
    )


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(argv), flush=True)
    result = subprocess.run(
        argv, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    print(result.stdout, end="", flush=True)
    if check and result.returncode != 0:
        fail(f"`{' '.join(argv)}` failed with exit status {result.returncode}")
    return result


def add_shard() -> subprocess.CompletedProcess:
    return run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory_dir() / "hosts.yml"),
            "playbooks/add_shard.yml",
            "-e",
            f"persona={PERSONA}",
            "-e",
            f"shard_number={NUMBER}",
            "-e",
            f"phone_number={PHONE}",
            "-e",
            f"target_host={HOST}",
        ],
        check=False,
    )


def play_person_steps() -> None:
    lab = str(BIN / "edge-lab")
    for step in (
        ["gui", "login", HOST, USER],
        ["imessage", "signin", HOST, USER, PHONE],
        ["grant", "fda", HOST],
        ["grant", "automation", HOST, USER],
    ):
        run([lab, *step])


def newest_reply_rowid(chat_db: Path) -> int:
    with sqlite3.connect(f"file:{chat_db}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT max(m.ROWID) FROM message m"
            " JOIN chat_message_join j ON j.message_id = m.ROWID"
            " JOIN chat c ON c.ROWID = j.chat_id"
            " WHERE m.is_from_me = 1 AND m.is_sent = 1 AND c.chat_identifier = ?",
            (LAB_PHONE,),
        ).fetchone()
    return row[0] or 0


def round_trip() -> float:
    chat_db = lab_dir() / "hosts" / HOST / "Users" / USER / "Library" / "Messages" / "chat.db"
    before = newest_reply_rowid(chat_db)
    started = time.monotonic()
    run(
        [
            str(BIN / "edge-lab"),
            "phone",
            "send",
            "--to",
            PHONE,
            "--from",
            LAB_PHONE,
            "hello from the lab phone",
        ]
    )
    deadline = started + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if newest_reply_rowid(chat_db) > before:
            return (time.monotonic() - started) * 1000
        time.sleep(0.05)
    fail(
        f"no reply sent from {SHARD} within {REPLY_TIMEOUT_S} s; "
        f"see {HOST}:/Users/{USER}/Library/Logs/edge-relay/relay.log"
    )


def show_shard() -> None:
    with sqlite3.connect(lab_dir() / "backend.db") as db:
        rows = db.execute(
            "SELECT shard_id, phone_number, host, state, active_users FROM persona_shards"
            " ORDER BY shard_id"
        ).fetchall()
    print(f"{'shard':<10}{'phone':<15}{'host':<10}{'state':<14}users")
    for shard_id, phone, host, state, users in rows:
        print(f"{shard_id:<10}{phone:<15}{host:<10}{state:<14}{users}")


def main() -> None:
    run([str(BIN / "edge-lab"), "up", "--hosts", "2"])
    first = add_shard()
    if first.returncode != 0:
        if "waiting for a person" not in first.stdout:
            fail("add_shard.yml failed (see above)")
        print("\nadd_shard.yml stopped for the person-only steps; the lab plays them now.\n")
        play_person_steps()
        if add_shard().returncode != 0:
            fail("add_shard.yml failed after the person-only steps (see above)")
    print(f"round trip ok: {round_trip():.0f} ms")
    show_shard()
    print("\nThe lab keeps running: `make lab-down` stops it.")


if __name__ == "__main__":
    main()
