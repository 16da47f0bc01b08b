# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend database as the collection's shard modules see it.

One DSN option for every module (``sqlite:///abs/path`` or ``postgresql://...``), one
connection class hiding the two drivers' differences: SQL is written once with ``:name``
placeholders and rewritten here for psycopg, rows come back as plain dicts, and every
driver error becomes a sentence that names the database without its password.
"""

import os
import re
import sqlite3
import traceback
from urllib.parse import quote, urlsplit

from ansible.module_utils.basic import missing_required_lib

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:
    psycopg = None
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()
else:
    PSYCOPG_IMPORT_ERROR = None

SHARD_COLUMNS = (
    "shard_id",
    "persona",
    "phone_number",
    "agent_id",
    "host",
    "state",
    "capacity",
    "active_users",
    "relay_version",
    "last_seen_at",
    "created_at",
    "updated_at",
)
# The shapes of a shard's names, as edge-backend and the playbooks take them.
SHARD_ID = re.compile(r"^([a-z][a-z0-9]{1,19})-(0[1-9]|[1-9][0-9])$")
PERSONA = re.compile(r"^[a-z][a-z0-9]{1,19}$")
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
NAMED_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
INIT_DB_HINT = "run `edge-backend init-db --dsn ...` first"


def shard_db_argument_spec():
    return dict(dsn=dict(type="str", required=True, no_log=True))


class ShardDBError(Exception):
    pass


def sqlite_path(dsn):
    """The file of a sqlite:// DSN. SQLAlchemy's absolute form, sqlite:////abs/path, names the
    same file as sqlite:///abs/path; left as is, SQLite would read //abs as a URI authority."""
    path = dsn[len("sqlite://") :]
    return "/" + path.lstrip("/") if path.startswith("/") else path


def describe_dsn(dsn):
    """The database named without its password (the DSN itself is masked in module output)."""
    if dsn.startswith("sqlite://"):
        return f"the SQLite database {sqlite_path(dsn)}"
    parts = urlsplit(dsn)
    where = parts.hostname or "the local socket"
    if parts.port:
        where += f":{parts.port}"
    database = parts.path.lstrip("/") or "(default)"
    user = f" as {parts.username}" if parts.username else ""
    return f"the PostgreSQL database {database} on {where}{user}"


class ShardDB:
    """A connection to the backend database, opened on construction."""

    def __init__(self, module, dsn):
        self.module = module
        self.dsn = dsn
        self.name = describe_dsn(dsn)
        self.queries = []
        if dsn.startswith("sqlite://"):
            self.kind = "sqlite"
            self.conn = self.connect_sqlite(sqlite_path(dsn))
        elif dsn.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            self.conn = self.connect_postgresql(dsn)
        else:
            module.fail_json(
                msg="dsn is neither sqlite:///absolute/path.db nor postgresql://user@host:port/db:"
                " give the backend database in one of those forms."
            )

    def connect_sqlite(self, path):
        if not path.startswith("/"):
            self.module.fail_json(
                msg="dsn sqlite:// must name an absolute path, as in sqlite:///srv/backend.db."
            )
        # SQLite's own reason for both is "unable to open database file": name which it is.
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise ShardDBError(
                f"cannot open {self.name}: its folder {folder} does not exist. Check the path "
                "in dsn; it must be the database edge-backend runs with."
            )
        if not os.path.exists(path):
            raise ShardDBError(
                f"cannot open {self.name}: there is no such file. Check the path in dsn, or "
                f"{INIT_DB_HINT}."
            )
        try:
            # mode=rw: a database is never made here, only opened.
            conn = sqlite3.connect(
                f"file:{quote(path)}?mode=rw", uri=True, timeout=10, isolation_level=None
            )
        except sqlite3.Error as err:
            raise ShardDBError(
                f"cannot open {self.name}: {err}. Check the path and that this user may read and "
                "write the file."
            ) from err
        conn.row_factory = sqlite3.Row
        return conn

    def connect_postgresql(self, dsn):
        if psycopg is None:
            self.module.fail_json(
                msg=missing_required_lib("psycopg (version 3)"), exception=PSYCOPG_IMPORT_ERROR
            )
        try:
            return psycopg.connect(dsn, connect_timeout=10, row_factory=dict_row)
        except psycopg.Error as err:
            reason = " ".join(str(err).split())
            raise ShardDBError(
                f"cannot connect to {self.name}: {reason}. Check that the database is running "
                "and that the dsn is right."
            ) from err

    def sql(self, text):
        if self.kind == "postgresql":
            return NAMED_PLACEHOLDER.sub(r"%(\1)s", text)
        return text

    def rows(self, text, params=None, record=True):
        if record:
            self.queries.append(text)
        try:
            cursor = self.conn.execute(self.sql(text), params or {})
            return [dict(row) for row in cursor.fetchall()]
        except (sqlite3.Error, *self.driver_errors()) as err:
            raise ShardDBError(f"{self.name} refused a query: {err}") from err

    def execute(self, text, params=None):
        self.queries.append(text)
        try:
            self.conn.execute(self.sql(text), params or {})
        except (sqlite3.Error, *self.driver_errors()) as err:
            raise ShardDBError(f"{self.name} refused a change: {err}") from err

    def driver_errors(self):
        return (psycopg.Error,) if psycopg is not None else ()

    def begin(self):
        """Start the write transaction; SQLite takes its write lock now, before the reads."""
        if self.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self):
        if self.kind == "sqlite":
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def rollback(self):
        try:
            if self.kind == "sqlite":
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            else:
                self.conn.rollback()
        except Exception:  # the connection may be gone; nothing was committed either way
            pass

    def close(self):
        self.rollback()
        self.conn.close()

    def require_shard_table(self):
        if self.kind == "sqlite":
            found = self.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'persona_shards'",
                record=False,
            )
        else:
            found = self.rows("SELECT to_regclass('persona_shards') AS name", record=False)
            found = [row for row in found if row["name"]]
        if not found:
            raise ShardDBError(f"table persona_shards not found in {self.name}: {INIT_DB_HINT}.")
        if self.kind == "postgresql":
            # to_regclass opened a transaction; end it so writes start from a clean one.
            self.conn.rollback()


def public_row(row):
    """A persona_shards row as modules return it: never the token hash."""
    if row is None:
        return {}
    return dict((column, row.get(column)) for column in SHARD_COLUMNS)
