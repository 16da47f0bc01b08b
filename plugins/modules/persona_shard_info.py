#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: persona_shard_info
short_description: Read shards from the backend's persona_shards table
description:
  - Returns the rows of the backend's C(persona_shards) table that match every filter given,
    ordered by shard id, without their token hashes. Changes nothing.
  - With O(persona), also returns RV(assignment), the shard the backend would give a new user
    of that persona now.
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - archety.edge.shard_db
options:
  shard_id:
    description: Only the shard with this id.
    type: str
  persona:
    description: Only the shards of this persona.
    type: str
  phone_number:
    description: Only the shard with this phone number (E.164).
    type: str
  host:
    description: Only the shards on this Mac mini.
    type: str
  state:
    description: Only the shards in this state.
    type: str
    choices: [provisioning, active, retiring, disabled]
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
notes:
  - Token hashes are never returned; a shard's token cannot be read back, only rotated with
    M(archety.edge.persona_shard).
  - RV(assignment) follows the backend's rule for a new user (sticky assignment) at the moment
    of the read, the C(active) shard of the persona with the fewest active users, the lowest
    shard id on a tie; the backend may decide otherwise a moment later, as users arrive.
"""

EXAMPLES = r"""
- name: Find the shards of persona sage
  archety.edge.persona_shard_info:
    dsn: "{{ edge_backend_dsn }}"
    persona: sage
  delegate_to: localhost
  register: edge_sage_shards

- name: Find the shard a new user of sage would be given
  archety.edge.persona_shard_info:
    dsn: "{{ edge_backend_dsn }}"
    persona: sage
  delegate_to: localhost
  register: edge_sage_next

- name: Say when sage has no shard to take a new user
  ansible.builtin.debug:
    msg: persona sage has no active shard; new users of sage would be refused
  when: edge_sage_next.assignment is none

- name: List the shards of one Mac mini still waiting to serve
  archety.edge.persona_shard_info:
    dsn: "{{ edge_backend_dsn }}"
    host: mini-02
    state: provisioning
  delegate_to: localhost
  register: edge_waiting_shards

- name: Find which shard owns a phone number
  archety.edge.persona_shard_info:
    dsn: "{{ edge_backend_dsn }}"
    phone_number: "+15551230003"
  delegate_to: localhost
  register: edge_number_owner
"""

RETURN = r"""
shards:
  description: The matching rows, ordered by shard id, without C(token_hash).
  returned: always
  type: list
  elements: dict
  sample:
    - shard_id: sage-01
      persona: sage
      phone_number: "+15551230001"
      agent_id: sage-01
      host: mini-01
      state: active
      capacity: 150
      active_users: 42
      relay_version: 1.0.0
      last_seen_at: "2026-12-03T12:00:05+00:00"
      created_at: "2026-11-20T09:00:00+00:00"
      updated_at: "2026-11-21T10:00:00+00:00"
exists:
  description: Whether at least one row matched.
  returned: always
  type: bool
assignment:
  description:
    - The shard a new user of O(persona) would be assigned to now, whatever the other filters
      say - the C(active) shard of that persona with the fewest active users, the lowest shard
      id on a tie - without C(token_hash).
    - V(null) when the persona has no C(active) shard; the backend then refuses new users.
  returned: when O(persona) is given
  type: dict
  sample:
    shard_id: sage-02
    persona: sage
    phone_number: "+15551230002"
    agent_id: sage-02
    host: mini-02
    state: active
    capacity: 150
    active_users: 17
    relay_version: 1.0.0
    last_seen_at: "2026-12-03T12:00:05+00:00"
    created_at: "2026-11-20T09:00:00+00:00"
    updated_at: "2026-11-21T10:00:00+00:00"
queries:
  description: The SQL statements run, with placeholders.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.shard_db import (  # noqa: E402
    E164,
    PERSONA,
    SHARD_COLUMNS,
    SHARD_ID,
    ShardDB,
    ShardDBError,
    public_row,
    shard_db_argument_spec,
)

FILTERS = ("shard_id", "persona", "phone_number", "host", "state")
STATES = ["provisioning", "active", "retiring", "disabled"]
# The backend's own choice for a new user of a persona (edge-backend, sticky assignment).
ASSIGNMENT = (
    f"SELECT {', '.join(SHARD_COLUMNS)} FROM persona_shards "
    "WHERE persona = :persona AND state = 'active' ORDER BY active_users, shard_id LIMIT 1"
)


def main():
    argument_spec = shard_db_argument_spec()
    argument_spec.update(dict((name, dict(type="str")) for name in FILTERS))
    argument_spec["state"]["choices"] = STATES
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    filters = dict(
        (name, module.params[name]) for name in FILTERS if module.params[name] is not None
    )
    # A filter no row could match is a mistake, not a question with an empty answer.
    for name, pattern, shape in (
        ("shard_id", SHARD_ID, "a shard id is <persona>-<NN>, as sage-01"),
        ("persona", PERSONA, "a persona is 2 to 20 lower-case letters and digits"),
        ("phone_number", E164, "a phone number is in E.164, + and 8 to 15 digits"),
    ):
        if name in filters and not pattern.match(filters[name]):
            module.fail_json(msg=f"{name} '{filters[name]}' can match no shard: {shape}.")
    where = " AND ".join(f"{name} = :{name}" for name in filters)
    query = f"SELECT {', '.join(SHARD_COLUMNS)} FROM persona_shards"
    if where:
        query += f" WHERE {where}"
    query += " ORDER BY shard_id"

    try:
        db = ShardDB(module, module.params["dsn"])
    except ShardDBError as err:
        module.fail_json(msg=str(err))
    result = dict(changed=False)
    try:
        db.require_shard_table()
        shards = [public_row(row) for row in db.rows(query, filters)]
        if "persona" in filters:
            chosen = db.rows(ASSIGNMENT, {"persona": filters["persona"]})
            result["assignment"] = public_row(chosen[0]) if chosen else None
    except ShardDBError as err:
        db.close()
        module.fail_json(msg=str(err), queries=db.queries)
    db.close()

    module.exit_json(shards=shards, exists=bool(shards), queries=db.queries, **result)


if __name__ == "__main__":
    main()
