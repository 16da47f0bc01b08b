"""Count the messages of traffic.py in the backend and in the shards' chat.db.

    python check_traffic.py RECORD

Prints one JSON object: how many were sent, how many the backend never received (lost_in),
how many got no reply in the shard's chat.db (lost_out), and how many got more than one
(duplicated). Each message is found by its guid in the backend's inbound_events, and its reply
(``echo: <text>``) among the outgoing rows of the shard's chat.db.
"""

import json
import sqlite3
import sys
from pathlib import Path

from edge_lab import hoststate
from edge_lab.layout import known_hosts, lab_dir


def chat_dbs():
    """chat.db of each lab account, by its phone number."""
    found = {}
    for host in known_hosts():
        for user, phone in hoststate.load(host.dir)["imessage"].items():
            found[phone] = host.dir / "Users" / user / "Library/Messages/chat.db"
    return found


def main():
    sent = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line]
    databases = chat_dbs()
    with sqlite3.connect(lab_dir() / "backend.db") as backend:
        shard_of = dict(backend.execute("SELECT phone_number, shard_id FROM persona_shards"))
        received = set(backend.execute("SELECT shard_id, guid FROM inbound_events"))
    replies = {}
    for phone, path in databases.items():
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for (text,) in db.execute("SELECT text FROM message WHERE is_from_me = 1"):
                replies[(phone, text)] = replies.get((phone, text), 0) + 1
    lost_in = [m for m in sent if (shard_of.get(m["phone"]), m["guid"]) not in received]
    counts = [replies.get((m["phone"], "echo: " + m["text"]), 0) for m in sent]
    print(
        json.dumps(
            {
                "sent": len(sent),
                "lost_in": len(lost_in),
                "lost_out": counts.count(0),
                "duplicated": sum(1 for c in counts if c > 1),
            }
        )
    )


if __name__ == "__main__":
    main()
