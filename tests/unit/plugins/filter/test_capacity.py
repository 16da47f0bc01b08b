"""archety.edge.shards_needed and mac_minis_needed: the fleet's capacity rule and bad input."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.archety.edge.plugins.filter.capacity import (
    FilterModule,
    mac_minis_needed,
    shards_needed,
)


@pytest.mark.parametrize(
    ("users", "shards", "minis"),
    [
        (500, 4, 1),
        (2000, 14, 4),
        (0, 0, 0),
        (1, 1, 1),
        (150, 1, 1),
        (151, 2, 1),
        (600, 4, 1),
        (601, 5, 2),
        ("2000", 14, 4),
        (2000.0, 14, 4),
    ],
)
def test_users_to_shards_to_mac_minis(users, shards, minis):
    assert shards_needed(users) == shards
    assert mac_minis_needed(shards_needed(users)) == minis


def test_settable_users_per_shard_and_shards_per_mac():
    assert shards_needed(2000, users_per_shard=100) == 20
    assert shards_needed(2000, 100) == 20
    assert mac_minis_needed(20, shards_per_mac=6) == 4
    assert mac_minis_needed(24, "6") == 4


def test_both_filters_are_exported():
    filters = FilterModule().filters()
    assert filters["shards_needed"] is shards_needed
    assert filters["mac_minis_needed"] is mac_minis_needed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: shards_needed(-1), "users must be at least 0, got -1"),
        (lambda: shards_needed("-20"), "users must be at least 0, got -20"),
        (lambda: shards_needed("many"), "users must be a whole number, got 'many'"),
        (lambda: shards_needed(None), "users must be a whole number, got None"),
        (lambda: shards_needed(True), "users must be a whole number, got True"),
        (lambda: shards_needed(10.5), "users must be a whole number, got 10.5"),
        (lambda: shards_needed("--5"), "users must be a whole number"),
        (lambda: shards_needed(500, 0), "users_per_shard must be at least 1, got 0"),
        (lambda: shards_needed(500, users_per_shard=-150), "users_per_shard must be at least 1"),
        (lambda: shards_needed(500, "x"), "users_per_shard must be a whole number, got 'x'."),
        (lambda: mac_minis_needed(-3), "shards must be at least 0, got -3"),
        (lambda: mac_minis_needed([4]), "shards must be a whole number, got [4]"),
        (lambda: mac_minis_needed(14, 0), "shards_per_mac must be at least 1, got 0"),
    ],
)
def test_bad_input_is_a_sentence_naming_the_value(call, message):
    with pytest.raises(AnsibleFilterError) as err:
        call()
    assert message in str(err.value)


def test_a_templated_value_is_named_by_its_text_not_its_type():
    class TemplatedText(str):  # Ansible's templated strings are str subclasses of its own
        pass

    with pytest.raises(AnsibleFilterError) as err:
        mac_minis_needed(4, TemplatedText("x"))
    assert str(err.value) == "shards_per_mac must be a whole number, got 'x'."
