"""The reference backend's tables, for module tests that need a backend database.

Kept beside the unit tests so that ansible-test, which runs them from the built collection,
finds it too; tests/modules imports it from there.
"""

# The backend's tables as docs/architecture.md ("Backend database") defines them.
SCHEMA = """
CREATE TABLE persona_shards(
  shard_id TEXT PRIMARY KEY, persona TEXT NOT NULL, phone_number TEXT NOT NULL UNIQUE,
  agent_id TEXT NOT NULL UNIQUE, host TEXT, state TEXT NOT NULL
    CHECK (state IN ('provisioning','active','retiring','disabled')),
  capacity INTEGER NOT NULL DEFAULT 150, active_users INTEGER NOT NULL DEFAULT 0,
  token_hash TEXT, relay_version TEXT, last_seen_at TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE user_assignments(persona TEXT, handle TEXT,
  shard_id TEXT REFERENCES persona_shards, assigned_at TEXT, PRIMARY KEY (persona, handle));
CREATE TABLE edge_commands(id TEXT PRIMARY KEY, shard_id TEXT, payload TEXT, status TEXT,
  created_at TEXT, leased_at TEXT, finished_at TEXT, detail TEXT);
CREATE TABLE inbound_events(shard_id TEXT, guid TEXT, received_at TEXT,
  PRIMARY KEY (shard_id, guid));
CREATE TABLE canary_checks(id TEXT PRIMARY KEY, shard_id TEXT, handle TEXT, status TEXT,
  sent_at TEXT, answered_at TEXT, round_trip_ms INTEGER);
CREATE TABLE edge_schema(version INTEGER);
"""
