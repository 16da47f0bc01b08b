"""The relay role gives each shard of a Mac the lowest free health port from the Mac's base.

The choice is one templated task; it is rendered here with Ansible's own templar, with the
ports the tasks before it read from health-ports.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

TASKS = Path(__file__).resolve().parents[2] / "roles/relay/tasks/shard.yml"


@pytest.fixture(scope="module")
def choose_task() -> dict:
    tasks = yaml.safe_load(TASKS.read_text())
    return next(t for t in tasks if t["name"] == "Choose the shard's health port (kept once given)")


def health_port(task, base, given=None, shard="sage-02", fixed=0) -> int:
    variables = {
        "relay_health_port_base": base,
        "relay_health_port": fixed,
        "relay_shard_id": shard,
        "_relay_ports": given or {},
    }
    variables.update({name: trust_as_template(value) for name, value in task["vars"].items()})
    expression = task["ansible.builtin.set_fact"]["relay_health_port_effective"]
    templar = Templar(loader=DataLoader(), variables=variables)
    return int(templar.template(trust_as_template(expression)))


def test_the_first_shard_of_a_mac_gets_the_base(choose_task):
    assert health_port(choose_task, 47100) == 47100
    assert health_port(choose_task, 47100, given={}) == 47100


@pytest.mark.parametrize("base", [47100, 47200, 51600, 51700, 33600, 36600])
def test_macs_whose_ranges_overlap_never_pick_the_same_port(choose_task, base):
    # Lab hosts share one loopback, their ranges 100 apart and 200 wide: the lowest free port
    # keeps them apart, where a port picked in hash order once gave two of them the same one.
    assert health_port(choose_task, base) == base
    assert health_port(choose_task, base + 100) == base + 100


def test_the_next_shard_gets_the_lowest_port_not_given(choose_task):
    given = {"sage-01": 51600, "sage-03": 51602}
    assert health_port(choose_task, 51600, given=given) == 51601


def test_a_shard_keeps_the_port_it_was_given(choose_task):
    assert health_port(choose_task, 51600, given={"sage-02": 51650}) == 51650


def test_a_port_set_on_purpose_wins(choose_task):
    assert health_port(choose_task, 51600, given={"sage-02": 51650}, fixed=9000) == 9000
