"""The HTTP side of the reference backend: the relay contract and the admin API.

Database work runs on one worker thread, so the event loop never blocks on
SQL and the steps of the backend never interleave. Long polls wait on an
in-process signal per shard; one backend process serves a database.
"""

import asyncio
import contextlib
import hmac
import logging
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import psycopg
from aiohttp import web

from edge_backend import __version__
from edge_backend.db import DsnError
from edge_backend.schema import SCHEMA_VERSION
from edge_backend.store import RESULT_STATES, Conflict, NotFound, Store, iso
from edge_backend.tokens import hash_token

log = logging.getLogger("edge_backend")

PERSONA_RE = re.compile(r"^[a-z][a-z0-9]{1,19}$")
SHARD_ID_RE = re.compile(r"^[a-z][a-z0-9]{1,19}-[0-9]{2}$")
E164_RE = re.compile(r"^\+[1-9][0-9]{7,14}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EVENTS = 1000
QUEUE_FIGURES = ("depth", "totalEnqueued", "totalDelivered", "totalDropped")


@dataclass
class Settings:
    admin_token: str
    lease_timeout_s: float = 180.0
    canary_timeout_s: float = 120.0
    command_ttl_s: float = 600.0
    heartbeat_interval_s: int = 30
    max_wait_s: float = 30.0
    # A pause before each answer to POST /edge/inbound: a slow backend, for benchmarks.
    inbound_delay_s: float = 0.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ApiError(Exception):
    """An answer other than success: its HTTP status and the sentence to show."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


class BadRequest(ApiError):
    """A request whose body or parameters are wrong (HTTP 400)."""

    def __init__(self, sentence: str):
        super().__init__(400, sentence)


class CommandSignals:
    """Wakes the long polls of a shard when a command is queued for it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, shard_id: str) -> asyncio.Event:
        return self._events.setdefault(shard_id, asyncio.Event())

    def notify(self, shard_id: str) -> None:
        event = self._events.pop(shard_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        for shard_id in list(self._events):
            self.notify(shard_id)


class Backend:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], datetime] = utc_now):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.signals = CommandSignals()
        self.heartbeats: dict[str, dict] = {}
        self.stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-db")

    async def db(self, method: Callable, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, method, *args)

    # Authentication

    async def shard_of(self, request: web.Request) -> dict:
        token = bearer_token(request)
        if token is None:
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <shard token>'")
        shard = await self.db(self.store.shard_by_token_hash, hash_token(token))
        if shard is None:
            log.warning("refused %s %s: unknown shard token", request.method, request.path)
            raise ApiError(
                401, "unknown shard token: check the relay's token file against the backend"
            )
        if shard["state"] == "disabled":
            log.warning(
                "refused %s %s: shard %s is disabled",
                request.method,
                request.path,
                shard["shard_id"],
            )
            raise ApiError(
                403, f"shard '{shard['shard_id']}' is disabled; an operator must enable it"
            )
        return shard

    def require_admin(self, request: web.Request) -> None:
        token = bearer_token(request)
        expected = self.settings.admin_token.encode("utf-8")
        if token is None or not hmac.compare_digest(token.encode("utf-8"), expected):
            raise ApiError(
                401, "missing or wrong admin token: send 'Authorization: Bearer <admin token>'"
            )

    # Relay contract

    async def register(self, request: web.Request) -> web.Response:
        shard = await self.shard_of(request)
        body = await json_body(request)
        agent_id = required_text(body, "agent_id")
        version = required_text(body, "version")
        host = optional_text(body, "host")
        check_agent(shard, agent_id)
        row = await self.db(self.store.register, shard["shard_id"], version, host, self.clock())
        log.info(
            "shard %s registered: relay %s on host %s, state %s",
            row["shard_id"],
            version,
            row["host"],
            row["state"],
        )
        return web.json_response(
            {
                "shard_id": row["shard_id"],
                "state": row["state"],
                "heartbeat_interval_s": self.settings.heartbeat_interval_s,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        shard = await self.shard_of(request)
        body = await json_body(request)
        agent_id = required_text(body, "agent_id")
        version = required_text(body, "version")
        status = required_text(body, "status")
        send_queue = body.get("send_queue")
        if not isinstance(send_queue, dict):
            raise BadRequest("field 'send_queue' must be an object with the relay's queue figures")
        for name in QUEUE_FIGURES:
            value = send_queue.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequest(f"field 'send_queue.{name}' must be a whole number, 0 or more")
        check_agent(shard, agent_id)
        now = self.clock()
        await self.db(self.store.heartbeat, shard["shard_id"], version, now)
        self.heartbeats[shard["shard_id"]] = {
            "status": status,
            "version": version,
            "send_queue": send_queue,
            "received_at": iso(now),
        }
        log.debug(
            "shard %s heartbeat: %s, queue depth %s",
            shard["shard_id"],
            status,
            send_queue.get("depth", 0),
        )
        return web.json_response({"ok": True, "state": shard["state"]})

    async def inbound(self, request: web.Request) -> web.Response:
        shard = await self.shard_of(request)
        body = await json_body(request)
        events = body.get("events")
        if not isinstance(events, list):
            raise BadRequest("field 'events' must be a list of events")
        if len(events) > MAX_EVENTS:
            raise BadRequest(
                f"a batch holds at most {MAX_EVENTS} events, this one {len(events)};"
                " send smaller batches"
            )
        for index, event in enumerate(events):
            check_event(index, event)

        outcome = await self.db(
            self.store.record_inbound,
            shard,
            events,
            self.clock(),
            self.settings.command_ttl_s,
            self.settings.canary_timeout_s,
        )
        if outcome.replies:
            self.signals.notify(shard["shard_id"])
        if self.settings.inbound_delay_s:
            await asyncio.sleep(self.settings.inbound_delay_s)
        log.info(
            "shard %s inbound: %d events, %d new (%s), %d replies queued, %d users assigned,"
            " canary answers %s",
            shard["shard_id"],
            len(events),
            len(outcome.new_guids),
            ",".join(outcome.new_guids) or "-",
            len(outcome.replies),
            outcome.assigned,
            ",".join(outcome.canaries_answered) or "-",
        )
        # Replies go out through the long poll, so that one path hands out
        # commands; the field is there for backends that answer inline.
        return web.json_response({"accepted": [event["guid"] for event in events], "commands": []})

    async def commands(self, request: web.Request) -> web.Response:
        shard = await self.shard_of(request)
        wait_s = wait_seconds(request, self.settings.max_wait_s)
        shard_id = shard["shard_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s

        while True:
            # Take the signal before looking, so a command queued while the
            # database is read still wakes this poll.
            signal = self.signals.event(shard_id)
            if request.transport is None or request.transport.is_closing():
                return web.json_response({"commands": []})
            lease = await self.db(
                self.store.lease_commands, shard_id, self.clock(), self.settings.lease_timeout_s
            )
            remaining = deadline - loop.time()
            if lease.commands or remaining <= 0 or self.stopping:
                break
            timeout = remaining
            if lease.next_release_at is not None:
                until_release = (lease.next_release_at - self.clock()).total_seconds()
                timeout = max(0.0, min(timeout, until_release))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signal.wait(), timeout)

        if lease.commands:
            log.info(
                "shard %s handed out commands %s",
                shard_id,
                ",".join(c["id"] for c in lease.commands),
            )
        return web.json_response({"commands": lease.commands})

    async def command_result(self, request: web.Request) -> web.Response:
        shard = await self.shard_of(request)
        body = await json_body(request)
        status = body.get("status")
        if status not in RESULT_STATES:
            raise BadRequest(
                f"field 'status' must be one of {', '.join(RESULT_STATES)}, not {status!r}"
            )
        detail = optional_text(body, "detail")
        command_id = request.match_info["command_id"]
        recorded = await self.db(
            self.store.record_result, shard["shard_id"], command_id, status, detail, self.clock()
        )
        if recorded:
            log.info("shard %s command %s: %s", shard["shard_id"], command_id, status)
        return web.json_response({"ok": True})

    # Admin API

    async def start_canary(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        shard_id = request.match_info["shard_id"]
        if not SHARD_ID_RE.match(shard_id):
            raise BadRequest(f"shard id '{shard_id}' is not of the form <persona>-<NN>")
        body = await json_body(request)
        handle = check_handle(body.get("handle"))
        check_id, command_id = await self.db(
            self.store.start_canary,
            shard_id,
            handle,
            self.clock(),
            self.settings.canary_timeout_s,
        )
        self.signals.notify(shard_id)
        log.info("canary %s queued for shard %s as command %s", check_id, shard_id, command_id)
        return web.json_response({"check_id": check_id, "status": "pending"}, status=202)

    async def canary(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        row = await self.db(
            self.store.canary,
            request.match_info["check_id"],
            self.clock(),
            self.settings.canary_timeout_s,
        )
        return web.json_response(
            {
                "check_id": row["id"],
                "shard_id": row["shard_id"],
                "status": row["status"],
                "round_trip_ms": row["round_trip_ms"],
            }
        )

    async def assign(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        persona = request.match_info["persona"]
        if not PERSONA_RE.match(persona):
            raise BadRequest(
                f"persona '{persona}' must be a lowercase letter then 1 to 19 letters or digits"
            )
        body = await json_body(request)
        handle = check_handle(body.get("handle"))
        shard_id, fresh = await self.db(self.store.assign, persona, handle, self.clock())
        if fresh:
            log.info("persona %s: a new user was assigned to shard %s", persona, shard_id)
        return web.json_response({"shard_id": shard_id})

    async def shards(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        rows = await self.db(self.store.list_shards)
        for row in rows:
            row["heartbeat"] = self.heartbeats.get(row["shard_id"])
        return web.json_response({"shards": rows})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "version": __version__, "schema_version": SCHEMA_VERSION}
        )

    async def on_shutdown(self, app: web.Application) -> None:
        # Answer waiting polls now rather than holding the shutdown for 30 s.
        self.stopping = True
        self.signals.notify_all()

    async def on_cleanup(self, app: web.Application) -> None:
        self._executor.shutdown(wait=True)


# Request checks: each failure is one sentence naming the field.


def bearer_token(request: web.Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the request body is not valid JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def required_text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"field '{name}' is required and must be a non-empty string")
    return value


def optional_text(body: dict, name: str) -> Optional[str]:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a string or null")
    return value


def check_agent(shard: dict, agent_id: str) -> None:
    if agent_id != shard["agent_id"]:
        raise ApiError(
            409,
            f"this token belongs to agent '{shard['agent_id']}', not '{agent_id}';"
            " check the relay's shard_id and token file",
        )


def check_handle(value: Any) -> str:
    if not isinstance(value, str) or not (E164_RE.match(value) or EMAIL_RE.match(value)):
        raise BadRequest(
            "field 'handle' must be a phone number in E.164 (+ and 8 to 15 digits)"
            " or an email address"
        )
    return value


EVENT_TYPES = ("message", "reaction", "edit", "unsend", "group_change")
REACTION_NAMES = ("love", "like", "dislike", "laugh", "emphasize", "question", "emoji", "sticker")
GROUP_CHANGES = ("member_added", "member_removed", "member_left", "renamed")


def _require_text(where: str, event: dict, *names: str) -> None:
    for name in names:
        if not isinstance(event.get(name), str) or not event[name]:
            raise BadRequest(f"{where}: field '{name}' is required and must be a non-empty string")


def _optional_text(where: str, event: dict, *names: str) -> None:
    for name in names:
        if event.get(name) is not None and not isinstance(event[name], str):
            raise BadRequest(f"{where}: field '{name}' must be a string or null")


def _check_parts(where: str, parts: Any) -> None:
    if parts is not None and (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(p, (int, dict)) and not isinstance(p, bool) for p in parts)
    ):
        raise BadRequest(f"{where}: field 'parts' must be a non-empty list of parts")


def _check_attachments(where: str, attachments: Any) -> None:
    if attachments is None:
        return
    if not isinstance(attachments, list):
        raise BadRequest(f"{where}: field 'attachments' must be a list of attachments")
    for number, item in enumerate(attachments):
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: attachment {number} must be an object")
        _optional_text(f"{where}, attachment {number}", item, "path", "mime_type", "transfer_name")
        size = item.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise BadRequest(f"{where}, attachment {number}: field 'size' must be bytes, 0 or more")


def _check_date(where: str, value: Any) -> None:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise BadRequest(
            f"{where}: field 'date' must be an ISO 8601 time with a zone, such as"
            " 2024-05-01T12:00:00Z"
        )


def check_event(index: int, event: Any) -> None:
    """A `message` carries every field; the other types need their own key fields, and any
    common field they carry must have the right type."""
    where = f"event {index}"
    if not isinstance(event, dict):
        raise BadRequest(f"{where} must be an object")
    _require_text(where, event, "guid", "type")
    if event["type"] not in EVENT_TYPES:
        raise BadRequest(
            f"{where}: field 'type' must be one of {', '.join(EVENT_TYPES)}, not {event['type']!r}"
        )
    where = f"event {index} ({event['guid']})"
    kind = event["type"]
    if kind == "message":
        _require_text(where, event, "chat_guid", "handle", "date", "service")
        if "text" not in event or not (event["text"] is None or isinstance(event["text"], str)):
            raise BadRequest(f"{where}: field 'text' is required and must be a string or null")
        if not isinstance(event.get("is_from_me"), bool):
            raise BadRequest(f"{where}: field 'is_from_me' is required and must be true or false")
        _check_attachments(where, event.get("attachments"))
    else:
        _optional_text(where, event, "chat_guid", "handle", "service", "text")
        if "is_from_me" in event and not isinstance(event["is_from_me"], bool):
            raise BadRequest(f"{where}: field 'is_from_me' must be true or false")
    if "date" in event:
        _check_date(where, event["date"])
    participants = event.get("participants")
    if participants is not None and (
        not isinstance(participants, list)
        or not all(isinstance(handle, str) and handle for handle in participants)
    ):
        raise BadRequest(f"{where}: field 'participants' must be a list of handles (strings)")

    if kind == "reaction":
        _require_text(where, event, "target_guid")
        if event.get("action") not in (None, "add", "remove"):
            raise BadRequest(f"{where}: field 'action' must be 'add' or 'remove'")
        if event.get("reaction") not in (None, *REACTION_NAMES):
            raise BadRequest(
                f"{where}: field 'reaction' must be one of {', '.join(REACTION_NAMES)}"
            )
    elif kind in ("edit", "unsend"):
        _require_text(where, event, "message_guid")
        _check_parts(where, event.get("parts"))
    elif kind == "group_change" and event.get("change") not in GROUP_CHANGES:
        raise BadRequest(f"{where}: field 'change' must be one of {', '.join(GROUP_CHANGES)}")


def wait_seconds(request: web.Request, max_wait_s: float) -> float:
    raw = request.query.get("wait", "0")
    try:
        wait_s = float(raw)
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= max_wait_s:
        raise BadRequest(f"query 'wait' must be a number of seconds from 0 to {max_wait_s:g}")
    return wait_s


@web.middleware
async def json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every error answers {"error": "<sentence>"}, whatever raised it."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, str(exc))
    except NotFound as exc:
        return error(404, str(exc))
    except Conflict as exc:
        return error(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        sentence = exc.reason
        if exc.status == 404:
            sentence = f"there is no endpoint {request.method} {request.path}"
        elif exc.status == 405:
            sentence = f"{request.path} does not take {request.method}"
        elif exc.status == 413:
            sentence = "the request body is too large; send smaller batches"
        return error(exc.status, sentence)
    except (sqlite3.OperationalError, psycopg.OperationalError, DsnError) as exc:
        # The reason names the database, never a request's data.
        log.error(
            "database unavailable during %s %s: %s",
            request.method,
            request.path,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return error(503, "the backend database is unavailable; try again later")
    except Exception:
        log.exception("failed on %s %s", request.method, request.path)
        return error(500, "the backend failed on this request; its log says why")


def error(status: int, sentence: str) -> web.Response:
    return web.json_response({"error": sentence}, status=status)


def create_app(
    store: Store, settings: Settings, clock: Callable[[], datetime] = utc_now
) -> web.Application:
    backend = Backend(store, settings, clock)
    app = web.Application(middlewares=[json_errors])
    app.router.add_post("/edge/register", backend.register)
    app.router.add_post("/edge/heartbeat", backend.heartbeat)
    app.router.add_post("/edge/inbound", backend.inbound)
    app.router.add_get("/edge/commands", backend.commands, allow_head=False)
    app.router.add_post("/edge/commands/{command_id}/result", backend.command_result)
    app.router.add_post("/admin/shards/{shard_id}/canary", backend.start_canary)
    app.router.add_get("/admin/canary/{check_id}", backend.canary, allow_head=False)
    app.router.add_post("/admin/personas/{persona}/assign", backend.assign)
    app.router.add_get("/admin/shards", backend.shards, allow_head=False)
    app.router.add_get("/healthz", backend.healthz, allow_head=False)
    app.on_shutdown.append(backend.on_shutdown)
    app.on_cleanup.append(backend.on_cleanup)
    return app
