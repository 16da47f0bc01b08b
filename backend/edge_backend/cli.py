"""`edge-backend init-db` and `edge-backend serve`.

Exit codes: 0 done, 1 the server could not run, 2 bad input (a malformed or
unreachable DSN, a missing admin token file, a host that is not loopback).
"""

import argparse
import ipaddress
import logging
import os
import stat
import sys
from typing import Optional

from aiohttp import web

from edge_backend import __version__
from edge_backend.app import Settings, create_app
from edge_backend.db import Database, Dsn, DsnError, has_password
from edge_backend.schema import SchemaError, migrate
from edge_backend.store import Store

DSN_ENV = "EDGE_BACKEND_DSN"


class UsageError(Exception):
    """Input the operator must correct; the message says how."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="edge-backend",
        description="Reference backend of the archety.edge relay contract (echo replies).",
    )
    top.add_argument("--version", action="version", version=f"edge-backend {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    dsn_help = (
        "sqlite:///absolute/path.db or postgresql://user@host:port/db"
        f" (default: ${DSN_ENV}); keep passwords in ~/.pgpass, not in the DSN"
    )
    init = sub.add_parser("init-db", help="create or migrate the backend database schema")
    init.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=dsn_help)

    serve = sub.add_parser("serve", help="run the backend (creates the schema first)")
    serve.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=dsn_help)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    serve.add_argument("--port", type=int, default=8787)
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow listening on a non-loopback address"
    )
    serve.add_argument(
        "--admin-token-file", required=True, help="file whose first line is the admin token"
    )
    serve.add_argument(
        "--lease-timeout-s",
        type=float,
        default=180.0,
        help="seconds after which a command without result is handed out again",
    )
    serve.add_argument(
        "--canary-timeout-s",
        type=float,
        default=120.0,
        help="seconds after which a pending canary check reports timeout",
    )
    serve.add_argument(
        "--command-ttl-s",
        type=float,
        default=600.0,
        help="lifetime of a reply command (its expires_at)",
    )
    serve.add_argument(
        "--response-delay-ms",
        type=int,
        default=0,
        help="wait this long before answering each POST /edge/inbound (a slow backend)",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return top


def open_database(dsn: Optional[str]) -> Database:
    if not dsn:
        raise UsageError(f"no database given: pass --dsn or set {DSN_ENV}")
    parsed = Dsn.parse(dsn)
    if has_password(dsn):
        print(
            "edge-backend: warning: the DSN carries a password, which shows in process"
            " listings; keep it in ~/.pgpass instead",
            file=sys.stderr,
        )
    return Database(parsed)


def read_admin_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(
            f"cannot read the admin token file {path}: {exc.strerror}; create it with one line"
        ) from None
    if not token:
        raise UsageError(f"the admin token file {path} is empty; write the token on its first line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logging.getLogger("edge_backend").warning(
            "admin token file %s is readable by others; chmod 600 it", path
        )
    return token


def check_host(host: str, allow_remote: bool) -> None:
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"host {host} is not a loopback address; listen on 127.0.0.1 (or pass"
            " --allow-remote and put TLS in front)"
        )


def init_db(args: argparse.Namespace) -> int:
    db = open_database(args.dsn)
    try:
        before, after = migrate(db)
    finally:
        db.close()
    if before == after:
        print(f"edge-backend: schema already at version {after}; nothing to do")
    else:
        print(f"edge-backend: schema migrated from version {before} to {after}")
    return 0


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    check_host(args.host, args.allow_remote)
    for name in ("lease_timeout_s", "canary_timeout_s", "command_ttl_s"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be more than 0")
    if args.response_delay_ms < 0:
        raise UsageError("--response-delay-ms must be 0 or more")
    settings = Settings(
        admin_token=read_admin_token(args.admin_token_file),
        lease_timeout_s=args.lease_timeout_s,
        canary_timeout_s=args.canary_timeout_s,
        command_ttl_s=args.command_ttl_s,
        inbound_delay_s=args.response_delay_ms / 1000.0,
    )
    db = open_database(args.dsn)
    try:
        migrate(db)
        app = create_app(Store(db), settings)
        logging.getLogger("edge_backend").info(
            "edge-backend %s listening on %s:%d", __version__, args.host, args.port
        )
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            shutdown_timeout=5,
        )
    except OSError as exc:
        print(
            f"edge-backend: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    finally:
        db.close()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "init-db":
            return init_db(args)
        return serve(args)
    except (UsageError, DsnError, SchemaError) as exc:
        print(f"edge-backend: {exc}", file=sys.stderr)
        return 2
