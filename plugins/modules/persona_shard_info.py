#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: persona_shard_info
short_description: Read shards from the backend's persona_shards table
description:
  - Returns the rows of the backend's C(persona_shards) table that match every filter given,
    ordered by shard id, without their token hashes. Changes nothing.
version_added: "1.0.0"
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
"""

EXAMPLES = r"""
- name: Find the shards of persona sage
  archety.edge.persona_shard_info:
    dsn: "{{ edge_backend_dsn }}"
    persona: sage
  delegate_to: localhost
  register: edge_sage_shards

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
queries:
  description: The SQL statement run, with placeholders.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.shard_db import (  # noqa: E402
    SHARD_COLUMNS,
    ShardDB,
    ShardDBError,
    public_row,
    shard_db_argument_spec,
)

FILTERS = ("shard_id", "persona", "phone_number", "host")


def main():
    argument_spec = shard_db_argument_spec()
    argument_spec.update(dict((name, dict(type="str")) for name in FILTERS))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    filters = dict(
        (name, module.params[name]) for name in FILTERS if module.params[name] is not None
    )
    where = " AND ".join(f"{name} = :{name}" for name in filters)
    query = f"SELECT {', '.join(SHARD_COLUMNS)} FROM persona_shards"
    if where:
        query += f" WHERE {where}"
    query += " ORDER BY shard_id"

    try:
        db = ShardDB(module, module.params["dsn"])
    except ShardDBError as err:
        module.fail_json(msg=str(err))
    try:
        db.require_shard_table()
        rows = db.rows(query, filters)
    except ShardDBError as err:
        db.close()
        module.fail_json(msg=str(err))
    db.close()

    shards = [public_row(row) for row in rows]
    module.exit_json(changed=False, shards=shards, exists=bool(shards), queries=db.queries)


if __name__ == "__main__":
    main()
