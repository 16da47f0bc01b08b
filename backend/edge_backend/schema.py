"""The backend database schema and its migrations.

Each migration is a list of portable statements; `edge_schema` holds the
number of migrations applied. Migrating is idempotent: a database that is
current is left as it is.
"""

from edge_backend.db import Database

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS persona_shards (
            shard_id TEXT PRIMARY KEY,
            persona TEXT NOT NULL,
            phone_number TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL UNIQUE,
            host TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('provisioning', 'active', 'retiring', 'disabled')),
            capacity INTEGER NOT NULL DEFAULT 150,
            active_users INTEGER NOT NULL DEFAULT 0,
            token_hash TEXT,
            relay_version TEXT,
            last_seen_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS user_assignments (
            persona TEXT,
            handle TEXT,
            shard_id TEXT REFERENCES persona_shards (shard_id),
            assigned_at TEXT,
            PRIMARY KEY (persona, handle)
        )""",
        """CREATE TABLE IF NOT EXISTS edge_commands (
            id TEXT PRIMARY KEY,
            shard_id TEXT,
            payload TEXT,
            status TEXT,
            created_at TEXT,
            leased_at TEXT,
            finished_at TEXT,
            detail TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS inbound_events (
            shard_id TEXT,
            guid TEXT,
            received_at TEXT,
            PRIMARY KEY (shard_id, guid)
        )""",
        """CREATE TABLE IF NOT EXISTS canary_checks (
            id TEXT PRIMARY KEY,
            shard_id TEXT,
            handle TEXT,
            status TEXT,
            sent_at TEXT,
            answered_at TEXT,
            round_trip_ms INTEGER
        )""",
        # Every request looks a shard up by its token, and every poll scans
        # that shard's open commands.
        "CREATE INDEX IF NOT EXISTS persona_shards_token_hash ON persona_shards (token_hash)",
        "CREATE INDEX IF NOT EXISTS edge_commands_shard_status ON edge_commands (shard_id, status)",
        "CREATE INDEX IF NOT EXISTS canary_checks_shard_handle ON canary_checks (shard_id, handle)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database holds a schema this edge-backend cannot work with."""


def current_version(db: Database) -> int:
    """The schema version recorded in the database, 0 when it has none."""
    with db.transaction() as tx:
        if not tx.table_exists("edge_schema"):
            return 0
        row = tx.one("SELECT MAX(version) AS version FROM edge_schema")
    return int(row["version"]) if row and row["version"] is not None else 0


def migrate(db: Database) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION; returns (version before, version after)."""
    with db.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS edge_schema (version INTEGER)")
        row = tx.one("SELECT MAX(version) AS version FROM edge_schema")
        before = int(row["version"]) if row and row["version"] is not None else 0
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"the database schema is at version {before}, newer than this edge-backend"
                f" knows (version {SCHEMA_VERSION}); upgrade edge-backend"
            )
        for statements in MIGRATIONS[before:]:
            for statement in statements:
                tx.execute(statement)
        if before == 0:
            tx.execute("INSERT INTO edge_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif before < SCHEMA_VERSION:
            tx.execute("UPDATE edge_schema SET version = ?", (SCHEMA_VERSION,))
    return before, SCHEMA_VERSION
