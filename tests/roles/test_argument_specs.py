"""Each role's defaults/main.yml and meta/argument_specs.yml describe the same variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "meta/argument_specs.yml").exists())


def specs(role: str) -> dict[str, dict]:
    data = yaml.safe_load((ROLES / role / "meta/argument_specs.yml").read_text())
    options: dict[str, dict] = {}
    for entry in data["argument_specs"].values():
        options.update(entry.get("options", {}))
    return options


def defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults/main.yml").read_text()) or {}


def test_every_role_has_specs():
    assert set(ROLE_NAMES) == {p.name for p in ROLES.iterdir() if p.is_dir()}


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_defaults_and_specs_name_the_same_variables(role):
    assert set(defaults(role)) == set(specs(role))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_carry_the_role_prefix(role):
    assert all(name.startswith(role + "_") for name in specs(role))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_defaults_match_the_defaults_file(role):
    values = defaults(role)
    for name, option in specs(role).items():
        if "default" in option:
            assert option["default"] == values[name], name
        else:
            assert option.get("required"), f"{name} has neither a default nor required: true"
