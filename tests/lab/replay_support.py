"""A source chat.db as it comes off a Mac, for the replay tests: built from Messages' own table
definitions (the project's copy), with rows of each kind the relay must handle."""

import re
import sqlite3
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "lab/edge_lab/data/chat_db_schema.sql"
CORPUS = REPO.parent / "shared/corpus/imessage"
BODY = CORPUS / "attributed_body/AttributedBodyTextOnly"
BODY_TEXT = "Noter test"  # what the corpus says the body above holds

FRIEND = "+15550001111"
ALICE = "+15550002222"
BOB = "+15550003333"
CAROL = "carol@example.com"
GROUP_GUID = "iMessage;+;chat123456789"
DIRECT_GUID = f"any;-;{FRIEND}"
# 2023-11-14 22:13:20 UTC in nanoseconds since 2001: an old date the relay must still forward.
OLD_DATE = 721692800 * 1_000_000_000
PHOTO = b"\xff\xd8\xff\xe0 not much of a JPEG, but bytes to compare"
PHOTO_PATH = "Attachments/ab/11/{guid}/photo.jpeg"
MISSING_PATH = "Attachments/cd/22/{guid}/IMG_0001.HEIC"

# Columns a newer macOS added: an older chat.db has none of them.
NEWER_COLUMNS = {
    "message": (
        "date_edited",
        "date_retracted",
        "message_summary_info",
        "associated_message_emoji",
        "thread_originator_guid",
        "thread_originator_part",
        "part_count",
        "is_stewie",
        "is_sos",
        "is_critical",
        "is_kt_verified",
        "fallback_hash",
        "is_pending_satellite_send",
        "needs_relay",
        "schedule_type",
        "schedule_state",
        "sent_or_received_off_grid",
        "date_recovered",
        "is_time_sensitive",
        "ck_chat_id",
        "index_state",
        "filter_action",
        "filter_sub_action",
        "is_preview_sent",
        "is_preview_delivered",
        "date_preview_sent",
        "date_preview_delivered",
        "date_updated",
        "retry_count",
    ),
    "attachment": ("original_guid", "emoji_image_content_identifier", "preflight_info"),
    "chat": ("is_recovered", "is_deleting_incoming_messages", "is_pending_review"),
}


def new_guid():
    return str(uuid.uuid4()).upper()


def older_schema():
    """Messages' table definitions without the columns a newer macOS added."""
    lines = SCHEMA.read_text(encoding="utf-8").splitlines()
    for table, columns in NEWER_COLUMNS.items():
        [index] = [i for i, line in enumerate(lines) if line.startswith(f"CREATE TABLE {table} (")]
        for column in columns:
            lines[index], found = re.subn(rf", {column} [A-Z]+[^,)]*(?=[,)])", "", lines[index])
            assert found == 1, f"{table}.{column} not in the schema copy"
    return "\n".join(lines) + "\n"


class Source:
    """A chat.db written the way Messages writes one, with explicit (high) ROWIDs."""

    def __init__(self, path: Path, schema: str):
        self.path = path
        self.conn = sqlite3.connect(str(path))
        self.conn.executescript(schema)
        self.columns = {
            table: {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            for table in ("message", "attachment", "chat")
        }
        self.next_rowid = 5001
        self.guids = {}
        # People of other conversations first, so that handle ROWIDs differ from the lab's.
        for number in range(5):
            self.handle(f"+1555000090{number}", service="SMS")

    def insert(self, table, **values):
        values = {k: v for k, v in values.items() if k in self.columns.get(table, values)}
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
        return self.conn.execute(sql, tuple(values.values())).lastrowid

    def handle(self, handle, service="iMessage"):
        row = self.conn.execute(
            "SELECT ROWID FROM handle WHERE id = ? AND service = ?", (handle, service)
        ).fetchone()
        if row:
            return row[0]
        return self.insert(
            "handle", id=handle, service=service, country="us", uncanonicalized_id=handle
        )

    def chat(self, guid, style, identifier, members):
        chat_id = self.insert(
            "chat",
            guid=guid,
            style=style,
            state=3,
            chat_identifier=identifier,
            service_name="iMessage",
            account_login="+15559990000",
        )
        for member in members:
            self.conn.execute(
                "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                (chat_id, self.handle(member)),
            )
        return chat_id

    def message(self, name, chat_id, sender, date, **values):
        rowid = self.next_rowid
        self.next_rowid += 3  # gaps, as a real database has after deletions
        guid = new_guid()
        self.guids[name] = guid
        self.insert(
            "message",
            ROWID=rowid,
            guid=guid,
            handle_id=self.handle(sender) if sender else 0,
            service="iMessage",
            account="p:+15559990000",
            date=date,
            # Seconds before macOS 10.13, nanoseconds since.
            date_delivered=date + (1 if date < 10**11 else 10**9)
            if values.get("is_from_me")
            else 0,
            is_finished=1,
            **values,
        )
        self.conn.execute(
            "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?, ?, ?)",
            (chat_id, rowid, date),
        )
        return rowid

    def attachment(self, message_rowid, relative, home="~", **values):
        guid = self.guids.setdefault(relative, new_guid())
        attachment_id = self.insert(
            "attachment",
            guid=guid,
            original_guid=guid,
            filename=f"{home}/Library/Messages/{relative.format(guid=guid)}",
            transfer_state=5,
            **values,
        )
        self.conn.execute(
            "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)",
            (message_rowid, attachment_id),
        )
        return guid

    def close(self):
        self.conn.commit()
        self.conn.close()


def build_source(folder: Path, body: bytes, schema: str = None, date: int = OLD_DATE) -> Source:
    """A direct chat (text, attributedBody, two attachments, an own reply) and a group chat
    (a message and a reaction to it). The photo's file sits beside the database, as in a copy
    of the Messages folder; the HEIC's does not (never downloaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Source(folder / "chat.db", schema or SCHEMA.read_text(encoding="utf-8"))
    direct = source.chat(DIRECT_GUID, 45, FRIEND, [FRIEND])
    group = source.chat(GROUP_GUID, 43, "chat123456789", [ALICE, BOB, CAROL])
    second = 1 if date < 10**11 else 1_000_000_000

    source.message("text", direct, FRIEND, date, text="hello from a real Mac")
    source.message("body", direct, FRIEND, date + 1 * second, text=None, attributedBody=body)
    source.message(
        "group",
        group,
        ALICE,
        date + 2 * second,
        text="hello all",
        cache_roomnames="chat123456789",
    )
    source.message(
        "reaction",
        group,
        BOB,
        date + 3 * second,
        text="Loved “hello all”",
        associated_message_guid=f"p:0/{source.guids['group']}",
        associated_message_type=2000,
        associated_message_range_length=9,
        cache_roomnames="chat123456789",
    )
    photo = source.message(
        "photo", direct, FRIEND, date + 4 * second, text="\ufffc", cache_has_attachments=1
    )
    guid = source.attachment(
        photo,
        PHOTO_PATH,
        mime_type="image/jpeg",
        uti="public.jpeg",
        transfer_name="photo.jpeg",
        total_bytes=len(PHOTO),
    )
    file = folder / PHOTO_PATH.format(guid=guid)
    file.parent.mkdir(parents=True)
    file.write_bytes(PHOTO)
    heic = source.message(
        "heic", direct, FRIEND, date + 5 * second, text="\ufffc", cache_has_attachments=1
    )
    source.attachment(
        heic,
        MISSING_PATH,
        home="/Users/someone",  # some releases wrote the home folder out
        mime_type="image/heic",
        uti="public.heic",
        transfer_name="IMG_0001.HEIC",
        total_bytes=2_345_678,
    )
    source.message(
        "mine", direct, FRIEND, date + 6 * second, text="on my way", is_from_me=1, is_sent=1
    )
    source.close()
    return source


def lab_rows(chat_db):
    """Every message of a lab chat.db with its chat and sender, oldest first."""
    conn = sqlite3.connect(str(chat_db))
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(row)
            for row in conn.execute(
                "SELECT m.*, h.id AS sender, c.guid AS chat_guid FROM message m "
                "LEFT JOIN handle h ON h.ROWID = m.handle_id "
                "LEFT JOIN chat_message_join j ON j.message_id = m.ROWID "
                "LEFT JOIN chat c ON c.ROWID = j.chat_id ORDER BY m.ROWID"
            )
        ]
    finally:
        conn.close()


def dump(chat_db):
    """All rows of all tables: equal dumps mean an unchanged database."""
    conn = sqlite3.connect(str(chat_db))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        conn.close()
