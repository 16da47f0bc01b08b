#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: persona_shard
short_description: Add, change or remove a shard's row in the backend's persona_shards table
description:
  - Writes one row of the backend's C(persona_shards) table directly through a DSN, with the
    shard's persona, phone number, agent id, host, capacity and state.
  - Creating a row makes the shard's backend token, stores only its SHA-256 hex digest in
    C(token_hash) and returns the token once, as RV(token). O(rotate_token=true) makes a new one.
  - Validates everything before writing, and writes in one transaction.
  - Moves the shard's state only along the lifecycle C(edge-backend) expects, new ->
    C(provisioning); C(provisioning) -> C(active), C(retiring) or C(disabled); C(active) ->
    C(retiring) or C(disabled); C(retiring) -> C(active) or C(disabled); C(disabled) ->
    C(provisioning). Any row can be removed with O(state=absent).
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - archety.edge.shard_db
options:
  shard_id:
    description: The shard, C(<persona>-<NN>) with NN from 01 to 99, for example C(sage-01).
    type: str
    required: true
  persona:
    description: The persona; must be the one in O(shard_id). Defaults to it.
    type: str
  phone_number:
    description:
      - The shard's phone number in E.164 (C(+) and 8 to 15 digits). Required to create the
        row. A shard keeps its number; changing it on an existing row is refused.
    type: str
  agent_id:
    description: The agent id the relay reports. Defaults to O(shard_id) for a new row.
    type: str
  host:
    description: The Mac mini the shard runs on. Left as it is when not given.
    type: str
  capacity:
    description:
      - How many users the shard is meant to serve, at least 1. A new row gets 150 when it is
        not given; an existing row keeps its capacity.
    type: int
  state:
    description:
      - The shard's state. A new row starts in V(provisioning); when not given, an existing
        row keeps its state. V(absent) deletes the row.
    type: str
    choices: [provisioning, active, retiring, disabled, absent]
  rotate_token:
    description: Make a new token for an existing shard; the old one stops working at once.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
    platforms: posix
notes:
  - The result holds the shard's token when it was made (row created or token rotated).
    Run the task with C(no_log) set to true and store the token where the relay reads it; it cannot
    be read back later, only rotated.
  - A row with user assignments cannot be removed; move the users to other shards first.
  - RV(queries) lists the statements with their placeholders, never the values.
  - In check mode the module reads the row and the rows it must not collide with, returns
    the statements it would run in RV(queries) and the change as a diff, and writes nothing;
    it returns no RV(token), since none is stored.
  - Every check (formats, the lifecycle, a number or agent id taken by another shard) runs
    before the one write, in the same transaction; a refused run leaves the table as it was.
"""

EXAMPLES = r"""
- name: Register the new shard in the backend, not yet routable
  archety.edge.persona_shard:
    dsn: "{{ edge_backend_dsn }}"
    shard_id: sage-03
    phone_number: "+15551230003"
    host: mini-02
  delegate_to: localhost
  no_log: true
  register: edge_shard_row

- name: Make the shard routable once its canary answered
  archety.edge.persona_shard:
    dsn: "{{ edge_backend_dsn }}"
    shard_id: sage-03
    state: active
  delegate_to: localhost
"""

RETURN = r"""
shard:
  description: The row after the run (what it would be, in check mode), without C(token_hash).
  returned: always
  type: dict
  sample:
    shard_id: sage-03
    persona: sage
    phone_number: "+15551230003"
    agent_id: sage-03
    host: mini-02
    state: provisioning
    capacity: 150
    active_users: 0
    relay_version: null
    last_seen_at: null
    created_at: "2026-12-03T12:00:00+00:00"
    updated_at: "2026-12-03T12:00:00+00:00"
token:
  description: The shard's new backend token. Only its SHA-256 is stored.
  returned: when the row was created or the token rotated, outside check mode
  type: str
  sample: edge_3q2-7bX...
queries:
  description: The SQL statements run, or that would run in check mode, with placeholders.
  returned: always
  type: list
  elements: str
"""

import hashlib  # noqa: E402  (Ansible keeps the documentation first)
import secrets  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.shard_db import (  # noqa: E402
    E164,
    PERSONA,
    SHARD_ID,
    ShardDB,
    ShardDBError,
    public_row,
    shard_db_argument_spec,
)

# A new row's capacity: the fleet's rule of thumb of 150 users per shard for moderate use.
DEFAULT_CAPACITY = 150
TRANSITIONS = {
    None: ("provisioning",),
    "provisioning": ("active", "retiring", "disabled"),
    "active": ("retiring", "disabled"),
    "retiring": ("active", "disabled"),
    "disabled": ("provisioning",),
}


def now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_token():
    token = "edge_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode("ascii")).hexdigest()


def validate_input(module):
    """Reject bad input before the database is opened; each message names the field."""
    params = module.params
    shard_id = params["shard_id"]
    match = SHARD_ID.match(shard_id)
    if not match:
        module.fail_json(
            msg=f"shard_id '{shard_id}' is not <persona>-<NN>: a persona of 2 to 20 lower-case "
            "letters and digits starting with a letter, then a two-digit number 01 to 99, "
            "as in sage-01."
        )
    persona = params["persona"]
    if persona is not None and not PERSONA.match(persona):
        module.fail_json(
            msg=f"persona '{persona}' is not 2 to 20 lower-case letters and digits starting "
            "with a letter."
        )
    if persona is not None and persona != match.group(1):
        module.fail_json(
            msg=f"persona '{persona}' does not match shard_id '{shard_id}', whose persona is "
            f"'{match.group(1)}': give the shard id of that persona."
        )
    phone = params["phone_number"]
    if phone is not None and not E164.match(phone):
        module.fail_json(
            msg=f"phone_number '{phone}' is not E.164 (+ and 8 to 15 digits, no spaces), "
            "as in +15551230001."
        )
    if params["capacity"] is not None and params["capacity"] < 1:
        module.fail_json(msg=f"capacity {params['capacity']} must be at least 1.")
    if params["agent_id"] is not None and not params["agent_id"].strip():
        module.fail_json(msg="agent_id is empty: leave it out to use the shard id.")
    return match.group(1)


class ShardRow:
    def __init__(self, module, db, persona):
        self.module = module
        self.db = db
        self.persona = persona
        self.params = module.params
        self.shard_id = module.params["shard_id"]
        self.token = None

    def fail(self, msg):
        self.db.close()
        self.module.fail_json(msg=msg, queries=self.db.queries)

    def read(self):
        rows = self.db.rows(
            "SELECT * FROM persona_shards WHERE shard_id = :shard_id", {"shard_id": self.shard_id}
        )
        return rows[0] if rows else None

    def holder_of(self, column, value):
        rows = self.db.rows(
            f"SELECT shard_id FROM persona_shards WHERE {column} = :value "
            "AND shard_id <> :shard_id",
            {"value": value, "shard_id": self.shard_id},
        )
        return rows[0]["shard_id"] if rows else None

    def check_unique(self, phone, agent_id):
        """Refuse a number or an agent id another shard holds; phone None is not checked."""
        if phone is not None:
            holder = self.holder_of("phone_number", phone)
            if holder:
                self.fail(
                    f"phone_number {phone} is already the number of shard {holder}: each "
                    "shard has its own number. Give this shard another one."
                )
        holder = self.holder_of("agent_id", agent_id)
        if holder:
            self.fail(
                f"agent_id {agent_id} is already used by shard {holder}: give this shard "
                "its own agent id (by default its shard id)."
            )

    def check_transition(self, current, wanted):
        if wanted == current or wanted is None:
            return
        if wanted not in TRANSITIONS[current]:
            allowed = " or ".join(TRANSITIONS[current])
            start = (
                "a new shard" if current is None else f"shard {self.shard_id} in state {current}"
            )
            self.fail(
                f"state cannot go from {current or 'new'} to {wanted}: {start} can only go to "
                f"{allowed}."
            )

    def create(self):
        params = self.params
        if params["phone_number"] is None:
            self.fail(f"phone_number is required to create shard {self.shard_id}.")
        state = params["state"] or "provisioning"
        self.check_transition(None, state)
        agent_id = params["agent_id"] or self.shard_id
        self.check_unique(params["phone_number"], agent_id)
        self.token, token_hash = new_token()
        stamp = now()
        row = {
            "shard_id": self.shard_id,
            "persona": self.persona,
            "phone_number": params["phone_number"],
            "agent_id": agent_id,
            "host": params["host"],
            "state": state,
            "capacity": DEFAULT_CAPACITY if params["capacity"] is None else params["capacity"],
            "active_users": 0,
            "token_hash": token_hash,
            "relay_version": None,
            "last_seen_at": None,
            "created_at": stamp,
            "updated_at": stamp,
        }
        columns = [c for c in row if c not in ("active_users", "relay_version", "last_seen_at")]
        self.write(
            f"INSERT INTO persona_shards ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})",
            row,
        )
        return row

    def update(self, before):
        params = self.params
        phone = params["phone_number"]
        if phone is not None and phone != before["phone_number"]:
            self.fail(
                f"phone_number of shard {self.shard_id} is {before['phone_number']}, not "
                f"{phone}: a shard keeps its number. Retire this shard and add a new one for "
                "the new number."
            )
        self.check_transition(before["state"], params["state"])
        wanted = {
            "state": params["state"],
            "agent_id": params["agent_id"],
            "host": params["host"],
            "capacity": params["capacity"],
        }
        changes = dict(
            (column, value)
            for column, value in wanted.items()
            if value is not None and value != before[column]
        )
        if "agent_id" in changes:
            self.check_unique(None, changes["agent_id"])
        if params["rotate_token"]:
            self.token, changes["token_hash"] = new_token()
        after = dict(before)
        if not changes:
            return after
        changes["updated_at"] = now()
        after.update(changes)
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        self.write(
            f"UPDATE persona_shards SET {assignments} WHERE shard_id = :shard_id",
            dict(changes, shard_id=self.shard_id),
        )
        return after

    def remove(self):
        rows = self.db.rows(
            "SELECT COUNT(*) AS users FROM user_assignments WHERE shard_id = :shard_id",
            {"shard_id": self.shard_id},
        )
        if rows and rows[0]["users"]:
            self.fail(
                f"shard {self.shard_id} still has {rows[0]['users']} assigned users in "
                "user_assignments: set it to retiring and move its users to other shards "
                "before removing it."
            )
        self.write(
            "DELETE FROM persona_shards WHERE shard_id = :shard_id", {"shard_id": self.shard_id}
        )

    def write(self, text, params):
        if self.module.check_mode:
            self.db.queries.append(text)
        else:
            self.db.execute(text, params)


def main():
    argument_spec = shard_db_argument_spec()
    argument_spec.update(
        shard_id=dict(type="str", required=True),
        persona=dict(type="str"),
        phone_number=dict(type="str"),
        agent_id=dict(type="str"),
        host=dict(type="str"),
        capacity=dict(type="int"),
        state=dict(
            type="str", choices=["provisioning", "active", "retiring", "disabled", "absent"]
        ),
        rotate_token=dict(type="bool", default=False, no_log=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    persona = validate_input(module)
    params = module.params

    try:
        db = ShardDB(module, params["dsn"])
    except ShardDBError as err:
        module.fail_json(msg=str(err))
    shard = ShardRow(module, db, persona)
    try:
        db.require_shard_table()
        if not module.check_mode:
            db.begin()
        before = shard.read()
        if params["state"] == "absent":
            after = None
            if before is not None:
                shard.remove()
        elif before is None:
            after = shard.create()
        else:
            after = shard.update(before)
        if not module.check_mode:
            db.commit()
    except ShardDBError as err:
        shard.fail(str(err))
    db.close()

    if params["rotate_token"] and params["state"] == "absent":
        module.warn("rotate_token is ignored with state=absent: the row and its token are gone.")
    result = dict(
        changed=public_row(before) != public_row(after) or shard.token is not None,
        shard=public_row(after),
        queries=db.queries,
        diff=dict(before=public_row(before), after=public_row(after)),
    )
    if shard.token is not None and not module.check_mode:
        result["token"] = shard.token
    module.exit_json(**result)


if __name__ == "__main__":
    main()
