"""Every module's documentation renders with ansible-doc, as users will read it."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from module_support import COLLECTION_PARENT

MODULES = ("macos_user", "launchd_job", "persona_shard", "persona_shard_info", "mac_facts")


def ansible_doc():
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    return beside if os.path.exists(beside) else shutil.which("ansible-doc")


@pytest.mark.skipif(ansible_doc() is None, reason="ansible-doc is not installed beside pytest")
def test_ansible_doc_renders_every_module():
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTION_PARENT, ANSIBLE_NOCOLOR="1")
    names = ["archety.edge." + name for name in MODULES]
    done = subprocess.run(
        [ansible_doc(), "-t", "module", "--json", *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    docs = json.loads(done.stdout)
    assert sorted(docs) == sorted(names)
    for name, doc in docs.items():
        options = doc["doc"]["options"]
        assert doc["doc"]["notes"], f"{name} states no limitation in notes"
        assert doc["examples"].strip() and doc["return"], name
        for option, spec in options.items():
            description = spec["description"]
            lines = description if isinstance(description, list) else [description]
            assert all(isinstance(line, str) for line in lines), f"{name} {option}"
    assert docs["archety.edge.persona_shard"]["doc"]["options"]["dsn"]["required"] is True
