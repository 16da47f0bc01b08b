"""macOS's privacy database (TCC.db), as far as the lab's human steps write it.

The ``access`` table has the columns of macOS 14. A grant made in System Settings is a row
with ``auth_value`` 2 (allowed); switching it off keeps the row with ``auth_value`` 0.
"""

import os
import sqlite3
import time
from pathlib import Path

SYSTEM_DB = "Library/Application Support/com.apple.TCC/TCC.db"
USER_DB = "Library/Application Support/com.apple.TCC/TCC.db"  # under a home folder

FULL_DISK_ACCESS = "kTCCServiceSystemPolicyAllFiles"
APPLE_EVENTS = "kTCCServiceAppleEvents"
MESSAGES_BUNDLE_ID = "com.apple.MessagesApp"
# The relays run the Command Line Tools' python3: it is the process macOS holds responsible.
RELAY_CLIENT = "/Library/Developer/CommandLineTools/usr/bin/python3"

CLIENT_TYPE_BUNDLE_ID = 0
CLIENT_TYPE_PATH = 1
AUTH_DENIED = 0
AUTH_ALLOWED = 2
REASON_USER_CONSENT = 2  # answered a prompt (Automation)
REASON_USER_SET = 3  # switched on in System Settings (Full Disk Access)

SCHEMA = """
CREATE TABLE IF NOT EXISTS admin (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    id INTEGER NOT NULL PRIMARY KEY, bundle_id TEXT NOT NULL, uuid TEXT NOT NULL,
    display TEXT NOT NULL, UNIQUE (bundle_id, uuid));
CREATE TABLE IF NOT EXISTS access (
    service TEXT NOT NULL,
    client TEXT NOT NULL,
    client_type INTEGER NOT NULL,
    auth_value INTEGER NOT NULL,
    auth_reason INTEGER NOT NULL,
    auth_version INTEGER NOT NULL,
    csreq BLOB,
    policy_id INTEGER,
    indirect_object_identifier_type INTEGER,
    indirect_object_identifier TEXT NOT NULL DEFAULT 'UNUSED',
    indirect_object_code_identity BLOB,
    flags INTEGER,
    last_modified INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER)),
    pid INTEGER,
    pid_version INTEGER,
    boot_uuid TEXT NOT NULL DEFAULT 'UNUSED',
    last_reminded INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, client, client_type, indirect_object_identifier),
    FOREIGN KEY (policy_id) REFERENCES policies(id) ON DELETE CASCADE ON UPDATE CASCADE);
INSERT OR IGNORE INTO admin (key, value) VALUES ('version', 33);
"""


def ensure_db(path, uid=0, gid=0, dir_mode=0o755):
    """Create the database (and its folder) if missing, owned by ``uid``:``gid``."""
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True)
        os.chown(folder, uid, gid)
        os.chmod(folder, dir_mode)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
    db.close()
    os.chown(path, uid, gid)
    os.chmod(path, 0o644 if uid == 0 else 0o600)


def set_access(
    path,
    *,
    service,
    client,
    client_type,
    allowed,
    reason,
    indirect_object=None,
):
    """Record a grant (``allowed``) or its withdrawal in an existing TCC database."""
    row = {
        "service": service,
        "client": client,
        "client_type": client_type,
        "auth_value": AUTH_ALLOWED if allowed else AUTH_DENIED,
        "auth_reason": reason,
        "auth_version": 1,
        "indirect_object_identifier_type": CLIENT_TYPE_BUNDLE_ID if indirect_object else None,
        "indirect_object_identifier": indirect_object or "UNUSED",
        "flags": 0,
        "last_modified": int(time.time()),
    }
    columns = ", ".join(row)
    marks = ", ".join(":" + name for name in row)
    with sqlite3.connect(path) as db:
        db.execute(f"INSERT OR REPLACE INTO access ({columns}) VALUES ({marks})", row)
    db.close()


def auth_value(path, *, service, client, indirect_object=None):
    """The ``auth_value`` of a row, or None when there is no row (never asked)."""
    if not Path(path).exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT auth_value FROM access WHERE service = ? AND client = ?"
            " AND indirect_object_identifier = ?",
            (service, client, indirect_object or "UNUSED"),
        ).fetchone()
    db.close()
    return None if found is None else found[0]
