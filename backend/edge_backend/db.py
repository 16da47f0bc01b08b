"""One connection to the backend database, SQLite or PostgreSQL, chosen by the DSN.

The SQL of the backend is written once, with `?` placeholders and portable
statements (`INSERT ... ON CONFLICT DO NOTHING`, plain TEXT and INTEGER
columns); this module turns the placeholders into what the driver expects.
"""

import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 5


class DsnError(Exception):
    """A DSN that is malformed or names a database that cannot be reached."""


def redact(dsn: str) -> str:
    """The DSN with any password replaced, safe for an error message."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def has_password(dsn: str) -> bool:
    try:
        return urlsplit(dsn).password is not None
    except ValueError:
        return False


@dataclass(frozen=True)
class Dsn:
    kind: str  # "sqlite" or "postgresql"
    target: str  # the file path, or the DSN given to libpq
    shown: str  # what error messages may print

    @classmethod
    def parse(cls, dsn: str) -> "Dsn":
        usage = "use sqlite:///absolute/path.db or postgresql://user@host:port/db"
        if dsn.startswith("sqlite:") and not dsn.startswith(SQLITE_PREFIX):
            raise DsnError(f"DSN '{dsn}' does not name an absolute file path: {usage}")
        if dsn.startswith(SQLITE_PREFIX):
            # sqlite:////abs/path, SQLAlchemy's form, names the same file as sqlite:///abs/path.
            path = "/" + dsn[len("sqlite://") :].lstrip("/")
            if not os.path.isabs(path) or path == "/":
                raise DsnError(f"DSN '{dsn}' does not name an absolute file path: {usage}")
            return cls("sqlite", path, dsn)
        shown = redact(dsn)
        scheme = dsn.split("://", 1)[0] if "://" in dsn else ""
        if scheme in POSTGRES_SCHEMES:
            try:
                parts = urlsplit(dsn)
                parts.port  # noqa: B018 - raises ValueError for a non-numeric port
                psycopg.conninfo.conninfo_to_dict(dsn)
            except (ValueError, psycopg.ProgrammingError) as exc:
                raise DsnError(f"DSN '{shown}' is malformed ({exc}): {usage}") from None
            if not parts.path.strip("/"):
                raise DsnError(f"DSN '{shown}' names no database: {usage}")
            return cls("postgresql", dsn, shown)
        raise DsnError(f"DSN '{shown}' is not supported: {usage}")


class Database:
    """A single connection; callers serialise access (the server uses one worker thread)."""

    def __init__(self, dsn: Dsn):
        self.dsn = dsn
        self.kind = dsn.kind
        self._conn: Any = None
        self._connect()

    @classmethod
    def open(cls, dsn: str) -> "Database":
        return cls(Dsn.parse(dsn))

    def _connect(self) -> None:
        if self.kind == "sqlite":
            self._conn = _connect_sqlite(self.dsn)
        else:
            self._conn = _connect_postgres(self.dsn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator["Tx"]:
        """One transaction; it commits on success and rolls back on any error."""
        if self.kind == "sqlite":
            # IMMEDIATE takes the write lock up front, so a read-then-write
            # step cannot be overtaken by another writer of the same file.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self._conn, "?")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return
        if self._conn.closed or self._conn.broken:
            self._reconnect_postgres()
        with self._conn.transaction():
            yield Tx(self._conn, "%s")

    def _reconnect_postgres(self) -> None:
        try:
            self._conn.close()
        finally:
            self._conn = _connect_postgres(self.dsn)


class Tx:
    """The statements of one transaction, with rows as dictionaries."""

    def __init__(self, conn: Any, placeholder: str):
        self._conn = conn
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        cur = self._conn.execute(self._sql(sql), tuple(params))
        return cur.rowcount

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        cur = self._conn.execute(self._sql(sql), tuple(params))
        return [dict(row) for row in cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Optional[dict]:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def table_exists(self, name: str) -> bool:
        if self._placeholder == "?":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = (
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = current_schema() AND tablename = ?"
            )
        return self.one(sql, (name,)) is not None


def _connect_sqlite(dsn: Dsn) -> sqlite3.Connection:
    folder = os.path.dirname(dsn.target)
    if not os.path.isdir(folder):
        raise DsnError(
            f"cannot open the SQLite database of '{dsn.shown}': folder {folder} does not exist;"
            " create it or choose another path"
        )
    try:
        conn = sqlite3.connect(dsn.target, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as exc:
        raise DsnError(
            f"cannot open the SQLite database of '{dsn.shown}': {exc}; check the path and"
            " its permissions"
        ) from None
    return conn


def _connect_postgres(dsn: Dsn) -> psycopg.Connection:
    try:
        return psycopg.connect(
            dsn.target, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.Error as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DsnError(
            f"cannot reach the PostgreSQL database of '{dsn.shown}': {reason}; check that the"
            " server runs and the DSN's host, port, user and database"
        ) from None
