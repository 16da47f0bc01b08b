"""capacity.yml from the user counts alone, with no backend to compare with: no lab needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_plan_from_the_counts_alone_needs_no_backend(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    argv += [str(REPO / "playbooks" / "capacity.yml")]
    argv += ["-e", '{"capacity_users": {"sage": 2000, "nova": 500}}']
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The callback may fold long lines: read the words.
    assert "the plan comes from the user counts alone" in " ".join(output.split())
    rows = {}
    for line in output.splitlines():
        words = line.strip().lstrip("- ").split()
        if words and words[0] in ("sage", "nova"):
            rows[words[0]] = words[1:]
    # users, shards, Mac minis, then the fleet now (nothing), and the shards to add
    assert rows["sage"] == ["2000", "14", "4", "0", "0", "0", "0", "14"], output
    assert rows["nova"] == ["500", "4", "1", "0", "0", "0", "0", "4"], output
