# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How many shards and Mac minis a number of users needs.

shards_needed = ceil(users / users_per_shard), mac_minis_needed = ceil(shards / shards_per_mac),
with the fleet's rule of thumb of 150 users per shard and 4 shards per Mac mini as defaults.
The documentation of each filter is in the YAML file of the same name beside this one.
"""

import re

from ansible.errors import AnsibleFilterError

USERS_PER_SHARD = 150
SHARDS_PER_MAC = 4
WHOLE_NUMBER = re.compile(r"^\s*-?[0-9]+\s*$")


def _count(value, name, smallest):
    """A whole number of at least `smallest`, from an int or its decimal text."""
    number = None
    # bool is an int in Python; True users is a mistake, not 1.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        number = int(value) if WHOLE_NUMBER.match(value) else None
    if number is None:
        raise AnsibleFilterError(f"{name} must be a whole number, got {value!r}.")
    if number < smallest:
        raise AnsibleFilterError(f"{name} must be at least {smallest}, got {number}.")
    return number


def _ceil_div(total, per):
    return -(-total // per)


def shards_needed(users, users_per_shard=USERS_PER_SHARD):
    """Shards that serve `users` users at `users_per_shard` users each."""
    users = _count(users, "users", 0)
    per = _count(users_per_shard, "users_per_shard", 1)
    return _ceil_div(users, per)


def mac_minis_needed(shards, shards_per_mac=SHARDS_PER_MAC):
    """Mac minis that hold `shards` shards at `shards_per_mac` shards each."""
    shards = _count(shards, "shards", 0)
    per = _count(shards_per_mac, "shards_per_mac", 1)
    return _ceil_div(shards, per)


class FilterModule:
    def filters(self):
        return {"shards_needed": shards_needed, "mac_minis_needed": mac_minis_needed}
