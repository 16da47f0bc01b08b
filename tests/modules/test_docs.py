"""Every module's and filter's documentation renders with ansible-doc, as users will read it."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from module_support import COLLECTION_PARENT, REPO_ROOT

# Every plugin of the collection, found on disk, so a new one cannot be left out.
MODULES = sorted(
    os.path.basename(path)[: -len(".py")]
    for path in glob.glob(os.path.join(REPO_ROOT, "plugins", "modules", "*.py"))
    if not os.path.basename(path).startswith("_")
)
FILTERS = sorted(
    os.path.basename(path)[: -len(".yml")]
    for path in glob.glob(os.path.join(REPO_ROOT, "plugins", "filter", "*.yml"))
)


def ansible_doc():
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    return beside if os.path.exists(beside) else shutil.which("ansible-doc")


def render(kind, names):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTION_PARENT, ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [ansible_doc(), "-t", kind, "--json", *["archety.edge." + name for name in names]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def descriptions_are_text(name, options):
    for option, spec in options.items():
        description = spec["description"]
        lines = description if isinstance(description, list) else [description]
        assert lines and all(isinstance(line, str) and line for line in lines), f"{name} {option}"


needs_ansible_doc = pytest.mark.skipif(
    ansible_doc() is None, reason="ansible-doc is not installed beside pytest"
)


def test_the_collection_has_the_plugins_the_readme_lists():
    assert MODULES == [
        "edge_health",
        "launchd_job",
        "mac_facts",
        "macos_user",
        "persona_shard",
        "persona_shard_info",
    ]
    assert FILTERS == ["mac_minis_needed", "shards_needed"]


@needs_ansible_doc
def test_ansible_doc_renders_every_module():
    docs = render("module", MODULES)
    assert sorted(docs) == ["archety.edge." + name for name in MODULES]
    for name, doc in docs.items():
        assert doc["doc"]["notes"], f"{name} states no limitation in notes"
        assert doc["doc"]["short_description"] and doc["doc"]["description"], name
        assert doc["examples"].strip() and doc["return"], name
        assert set(doc["doc"]["attributes"]) >= {"check_mode", "diff_mode", "platform"}, name
        descriptions_are_text(name, doc["doc"]["options"])
    assert docs["archety.edge.persona_shard"]["doc"]["options"]["dsn"]["required"] is True
    assert "pid" in docs["archety.edge.edge_health"]["doc"]["options"]
    assert "assignment" in docs["archety.edge.persona_shard_info"]["return"]


@needs_ansible_doc
def test_ansible_doc_renders_every_filter():
    docs = render("filter", FILTERS)
    assert sorted(docs) == ["archety.edge." + name for name in FILTERS]
    for name, doc in docs.items():
        assert doc["doc"]["short_description"] and doc["doc"]["notes"], name
        assert doc["examples"].strip() and doc["return"]["_value"]["type"] == "int", name
        descriptions_are_text(name, doc["doc"]["options"])
