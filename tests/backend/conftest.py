"""Fixtures for the reference backend: a database of each kind, a running app, a spec check.

Every response the tests receive through `SpecClient` is validated against
backend/openapi.yaml, and every well-formed request body they send too, so
the contract file and the server cannot drift apart.
"""

import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import jsonschema
import psycopg
import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer
from edge_backend.app import Settings, create_app
from edge_backend.db import Database
from edge_backend.schema import migrate
from edge_backend.store import Store, iso
from edge_backend.tokens import hash_token, new_token
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "backend" / "openapi.yaml"
SPEC_URI = "urn:edge-backend:openapi"
# The same variable as tests/modules: a DSN of a database on the server to use; the tests
# make and drop a database of their own on that server.
PG_DSN = os.environ.get("EDGE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_SERVER = PG_DSN.split("?", 1)[0].rsplit("/", 1)[0]
BACKEND_TABLES = (
    "edge_schema",
    "user_assignments",
    "edge_commands",
    "inbound_events",
    "canary_checks",
    "persona_shards",
)


# The contract file


class Spec:
    def __init__(self, path: Path):
        self.doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)
        self._templates = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in self.doc["paths"]
        ]

    def template(self, path: str) -> str:
        for pattern, template in self._templates:
            if pattern.match(path):
                return template
        raise AssertionError(f"{path} matches no path of {SPEC_PATH.name}")

    def _validate(self, pointer: str, instance: Any) -> None:
        schema = {"$ref": f"{SPEC_URI}#{pointer}"}
        validator = jsonschema.Draft202012Validator(
            schema,
            registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(instance)

    def _resolve(self, node: dict) -> tuple[dict, str]:
        """Follow a $ref to components/responses; the node and its JSON pointer."""
        ref = node.get("$ref")
        if ref is None:
            return node, ""
        name = ref.rsplit("/", 1)[-1]
        return self.doc["components"]["responses"][name], f"/components/responses/{name}"

    def check_request(self, method: str, path: str, body: Any) -> None:
        template = self.template(path)
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not in the spec"
        if "requestBody" in operation:
            pointer = f"/paths/{_escape(template)}/{method.lower()}/requestBody"
            self._validate(pointer + "/content/application~1json/schema", body)

    def check_response(self, method: str, path: str, status: int, body: Any) -> None:
        template = self.template(path)
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not in the spec"
        responses = operation["responses"]
        assert str(status) in responses, (
            f"{method} {template} answered {status}, which the spec does not list: {body}"
        )
        node, pointer = self._resolve(responses[str(status)])
        if not pointer:
            pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{status}"
        if "content" in node:
            self._validate(pointer + "/content/application~1json/schema", body)


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


@pytest.fixture(scope="session")
def spec() -> Spec:
    return Spec(SPEC_PATH)


# Databases


@pytest.fixture(scope="session")
def pg_server_dsn() -> str:
    """A temporary PostgreSQL database for the session, dropped at the end."""
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {PG_SERVER} does not answer ({exc})".replace("\n", " ")
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must provide one")
        pytest.skip(reason + "; PostgreSQL tests skipped")
    name = "edge_backend_test_" + secrets.token_hex(4)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the backend supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/backend.db"
    server_dsn = request.getfixturevalue("pg_server_dsn")
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS " + ", ".join(BACKEND_TABLES) + " CASCADE")
    return server_dsn


@pytest.fixture
def database(dsn: str):
    db = Database.open(dsn)
    migrate(db)
    yield db
    db.close()


class Shards:
    """Writes persona_shards rows the way the collection's persona_shard module does."""

    def __init__(self, db: Database):
        self.db = db

    def add(
        self,
        shard_id: str,
        state: str = "active",
        active_users: int = 0,
        token: Optional[str] = None,
    ) -> str:
        persona, number = shard_id.rsplit("-", 1)
        token = token or new_token()
        persona_digit = sum(map(ord, persona)) % 90 + 10
        phone = f"+1555{persona_digit:02d}000{number}"
        stamp = iso(datetime.now(timezone.utc))
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, state,"
                " active_users, token_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    shard_id,
                    persona,
                    phone,
                    shard_id,
                    state,
                    active_users,
                    hash_token(token),
                    stamp,
                    stamp,
                ),
            )
        return token

    def set_state(self, shard_id: str, state: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("UPDATE persona_shards SET state = ? WHERE shard_id = ?", (state, shard_id))

    def row(self, shard_id: str) -> dict:
        with self.db.transaction() as tx:
            return tx.one("SELECT * FROM persona_shards WHERE shard_id = ?", (shard_id,))

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        with self.db.transaction() as tx:
            return tx.all(sql, params)


@pytest.fixture
def shards(database: Database) -> Shards:
    return Shards(database)


# The running backend


class SpecClient:
    """An HTTP client whose every exchange is checked against the contract file."""

    def __init__(self, client: TestClient, spec: Spec, admin_token: str):
        self.client = client
        self.spec = spec
        self.admin_token = admin_token

    async def call(
        self,
        method: str,
        path: str,
        token: Optional[str] = None,
        body: Any = None,
        params: Optional[dict] = None,
        raw: Optional[str] = None,
        conforming: bool = True,
    ) -> tuple[int, Any]:
        """Send a request; `conforming=False` for requests meant to be refused."""
        if conforming and raw is None:
            self.spec.check_request(method, path, body)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.client.request(method, path, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            payload = await response.json()
        self.spec.check_response(method, path, response.status, payload)
        return response.status, payload

    async def admin(self, method: str, path: str, body: Any = None, **kw: Any):
        return await self.call(method, path, token=self.admin_token, body=body, **kw)

    async def poll(self, token: str, wait: float = 0) -> list[dict]:
        status, body = await self.call("GET", "/edge/commands", token, params={"wait": wait})
        assert status == 200, body
        return body["commands"]

    async def inbound(self, token: str, events: list[dict]) -> dict:
        status, body = await self.call("POST", "/edge/inbound", token, {"events": events})
        assert status == 200, body
        return body


def message(
    guid: str,
    text: Optional[str] = "hello",
    handle: str = "+15550101001",
    is_from_me: bool = False,
) -> dict:
    return {
        "guid": guid,
        "type": "message",
        "chat_guid": f"any;-;{handle}",
        "handle": handle,
        "text": text,
        "date": "2024-05-01T12:00:00Z",
        "is_from_me": is_from_me,
        "service": "iMessage",
    }


@pytest.fixture
def message_event():
    return message


@pytest_asyncio.fixture
async def start_backend(database: Database, spec: Spec):
    """Start the backend app on 127.0.0.1 with chosen settings; a SpecClient to it."""
    clients: list[TestClient] = []

    async def start(**settings: Any) -> SpecClient:
        admin_token = secrets.token_urlsafe(24)
        app = create_app(Store(database), Settings(admin_token=admin_token, **settings))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return SpecClient(client, spec, admin_token)

    yield start
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def backend(start_backend) -> SpecClient:
    return await start_backend()
