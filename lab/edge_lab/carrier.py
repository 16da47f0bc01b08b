"""The lab's phone network: carries messages between the lab's iMessage accounts.

``python -m edge_lab.carrier --lab-dir DIR`` runs it in the foreground until SIGTERM.
About ten times a second it looks at every user's Messages database of every lab host
(``<lab-dir>/hosts/*/Users/*/Library/Messages/chat.db``) for outgoing messages that
Messages has marked sent, and delivers each:

- to the canary handle (+15550009999) it answers, about 100 ms later, with an incoming
  ``ack <their text>`` from the canary in the sender's database;
- to a handle another lab user is signed in with (``imessage`` in each host's
  state.json), it writes the incoming message into that user's database;
- anything else leaves the lab and is only logged.

A failed send (``error`` set) is not carried. Its position in each database (the last
ROWID carried) is kept in ``<lab-dir>/carrier.json``, written after each delivery, so a
restart neither repeats nor skips a message. Logs never carry message text.
"""

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from edge_lab import hoststate, messages

log = logging.getLogger("edge_lab.carrier")

CANARY_HANDLE = "+15550009999"
CANARY_DELAY_S = 0.1
TICK_S = 0.1
# A database whose files did not change is scanned again only this often (for sends that time
# out): opening it as root every tick made SQLite chown its WAL each time, and every relay
# watching the folder heard about it.
RESCAN_S = 1.0
# A row Messages never marked sent or failed within this long is given up on.
PENDING_LIMIT_S = 30.0
CHAT_DB_GLOB = "hosts/*/Users/*/Library/Messages/chat.db"


def _files_state(chat_db: Path) -> tuple:
    """What a write to the database changes: its and its WAL's inode, size and mtime."""
    state = []
    for path in (chat_db, Path(str(chat_db) + "-wal")):
        try:
            info = path.stat()
        except OSError:
            state.append(None)
            continue
        state.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(state)


class Carrier:
    def __init__(self, lab_dir):
        self.lab_dir = Path(lab_dir)
        self.position_file = self.lab_dir / "carrier.json"
        self.positions: Dict[str, int] = self._load_positions()
        # Canary answers waiting for their time: (due, sender db, phone, text, rowid, guid).
        self.pending: List[Tuple[float, Path, str, str, int, str]] = []
        self.stopping = threading.Event()
        # Per database: its files' (inode, size, mtime) at the last scan, and when that was.
        self.scanned: Dict[Path, Tuple[tuple, float]] = {}

    def _load_positions(self) -> Dict[str, int]:
        try:
            data = json.loads(self.position_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise SystemExit(
                f"{self.position_file} is not valid JSON ({exc}): fix or remove it "
                "(removing it makes the carrier deliver every message again)"
            ) from exc
        return {str(k): int(v) for k, v in data.items()}

    def _save_positions(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".carrier.", dir=str(self.lab_dir))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.positions, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, self.position_file)

    def _key(self, chat_db: Path) -> str:
        return str(chat_db.relative_to(self.lab_dir))

    def directory(self) -> Dict[str, Path]:
        """Phone number -> chat.db of the lab user signed in with it."""
        phones: Dict[str, Path] = {}
        for host in sorted((self.lab_dir / "hosts").glob("*")):
            if not host.is_dir():
                continue
            accounts = hoststate.load(host).get("imessage") or {}
            for short_name, phone in accounts.items():
                phones[phone] = host / "Users" / short_name / "Library/Messages/chat.db"
        return phones

    def tick(self) -> None:
        """One pass: due canary answers first, then new outgoing rows of every database."""
        self._answer_due()
        phones = self.directory()
        own_phone = {db: phone for phone, db in phones.items()}
        for chat_db in sorted(self.lab_dir.glob(CHAT_DB_GLOB)):
            files = _files_state(chat_db)
            last = self.scanned.get(chat_db)
            now = time.monotonic()
            waiting = any(entry[1] == chat_db for entry in self.pending)
            if last and last[0] == files and now - last[1] < RESCAN_S and not waiting:
                continue
            self.scanned[chat_db] = (files, now)
            try:
                self._carry_from(chat_db, own_phone.get(chat_db), phones)
            except Exception as exc:  # one broken database must not stop the network
                log.error("cannot read %s: %s", self._key(chat_db), exc)

    def _carry_from(self, chat_db: Path, sender_phone: Optional[str], phones) -> None:
        key = self._key(chat_db)
        position = self.positions.get(key, 0)
        held = [entry for entry in self.pending if entry[1] == chat_db]
        if held:
            # Canary answers still waiting: the position stays before them.
            return
        for row in messages.outgoing_after(chat_db, position):
            if not row["is_sent"] and not row["error"]:
                age_s = (messages.apple_now() - (row["date"] or 0)) / 1e9
                if age_s < PENDING_LIMIT_S:
                    return  # Messages has not finished this send: wait, keep the order
                log.warning("%s: %s never sent, not carried", key, row["guid"])
            elif row["error"]:
                log.info(
                    "%s: %s failed to send (error %d), not carried", key, row["guid"], row["error"]
                )
            else:
                phone = sender_phone or (row["account"] or "").removeprefix("p:")
                if self._deliver(chat_db, key, row, phone, phones):
                    return  # a canary answer is due later; the position waits for it
            self.positions[key] = row["rowid"]
            self._save_positions()

    def _deliver(self, chat_db: Path, key: str, row, sender_phone: str, phones) -> bool:
        """Carry one sent row; True when its delivery is a canary answer still to come."""
        recipients = [row["handle"]] if row["handle"] else []
        if not recipients and row["chat_guid"]:
            recipients = messages.chat_handles(chat_db, row["chat_guid"])
        text = row["text"]
        if text is None:
            log.warning("%s: %s has no plain text, not carried", key, row["guid"])
            return False
        waiting = False
        for handle in recipients:
            if handle == CANARY_HANDLE:
                due = time.monotonic() + CANARY_DELAY_S
                answer = "ack " + text
                self.pending.append((due, chat_db, sender_phone, answer, row["rowid"], row["guid"]))
                waiting = True
            elif handle in phones and phones[handle].exists():
                guid = messages.add_incoming(
                    phones[handle], sender=sender_phone, text=text, account_phone=handle
                )
                log.info(
                    "delivered %s from %s to %s as %s", row["guid"], sender_phone, handle, guid
                )
            else:
                log.info(
                    "%s to %s left the lab (no lab phone has that number)", row["guid"], handle
                )
        return waiting

    def _answer_due(self) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        for entry in due:
            _, chat_db, phone, text, rowid, sent_guid = entry
            self.pending.remove(entry)
            key = self._key(chat_db)
            try:
                guid = messages.add_incoming(
                    chat_db, sender=CANARY_HANDLE, text=text, account_phone=phone
                )
            except Exception as exc:  # the host went away: its next scan decides again
                log.error("cannot answer row %d of %s: %s", rowid, key, exc)
                continue
            self.positions[key] = max(self.positions.get(key, 0), rowid)
            self._save_positions()
            log.info("canary answered %s from %s as %s", sent_guid, phone, guid)

    def run(self) -> None:
        log.info("carrier started on %s", self.lab_dir)
        while not self.stopping.is_set():
            started = time.monotonic()
            self.tick()
            self.stopping.wait(max(0.0, TICK_S - (time.monotonic() - started)))
        log.info("carrier stopped")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_lab.carrier", description="the lab's phone network"
    )
    parser.add_argument("--lab-dir", required=True, help="the lab's state folder (.lab)")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s carrier %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    lab_dir = Path(options.lab_dir)
    if not (lab_dir / "hosts").is_dir():
        print(f"{lab_dir} has no hosts folder: run edge-lab up first", file=sys.stderr)
        return 2
    carrier = Carrier(lab_dir)
    signal.signal(signal.SIGTERM, lambda *_: carrier.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: carrier.stopping.set())
    carrier.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
