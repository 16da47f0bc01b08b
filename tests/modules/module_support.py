"""Shared helpers for the collection's module tests (imported as ``module_support``).

Collection code imports itself as ``ansible_collections.archety.edge``, which only resolves
from a folder laid out as ``ansible_collections/<namespace>/<name>``. The tree is made once
per test session in a temporary folder, with ``edge`` a link to the repository root.

The modules that run on a Mac must work on macOS's Python 3.9; run them there with
``.venv39/bin/python -m pytest tests/modules`` (a Python 3.9 venv holding pytest; the
controller's ansible-core is borrowed, and the PostgreSQL tests skip without psycopg).
"""

import atexit
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
from unittest import mock

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _collection_tree():
    root = tempfile.mkdtemp(prefix="edge-modules-")
    atexit.register(shutil.rmtree, root, True)
    namespace = os.path.join(root, "ansible_collections", "archety")
    os.makedirs(namespace)
    os.symlink(REPO_ROOT, os.path.join(namespace, "edge"))
    try:
        import ansible  # noqa: F401
    except ImportError:
        # Under macOS's Python 3.9 (.venv39) ansible-core is not installed: borrow the
        # module_utils of the controller's ansible-core, which support Python 3.8+.
        found = glob.glob(os.path.join(REPO_ROOT, ".venv/lib/python3*/site-packages/ansible"))
        if found:
            os.symlink(found[0], os.path.join(root, "ansible"))
    sys.path.insert(0, root)
    return root


COLLECTION_PARENT = _collection_tree()

from ansible.module_utils import _internal as module_internal  # noqa: E402
from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.common import warnings  # noqa: E402
from ansible.module_utils.testing import patch_module_args  # noqa: E402


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get("failed"))

    @property
    def warning_texts(self):
        """module.warn messages: plain strings before ansible-core 2.19, summaries since."""
        return [w["event"]["msg"] if isinstance(w, dict) else w for w in self.get("warnings", [])]


def run_module(main, args, runner, check_mode=False, diff=False):
    """Run a module's main() the way Ansible would, with macOS's commands answered by runner.

    runner(argv, data) returns (rc, stdout, stderr). Every command is looked up under
    /usr/sbin, as get_bin_path finds them on a Mac. With runner None the commands really
    run, found on PATH.
    """
    args = dict(args)
    args["_ansible_check_mode"] = check_mode
    args["_ansible_diff"] = diff

    def run_command(self, argv, data=None, **kwargs):
        return runner(list(argv), data)

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/sbin/" + name

    out = []

    def capture(text):
        out.append(text)

    # Warnings are gathered process-wide, as if each module ran in its own process: start clean.
    warnings._global_warnings.clear()
    warnings._global_deprecations.clear()
    with contextlib.ExitStack() as stack:
        stack.enter_context(patch_module_args(args))
        # Once anything imports the controller's side of ansible-core (the filter tests import
        # ansible.errors), module.warn goes to the controller's display instead of the result.
        # A module runs in its own process, where that never happens.
        stack.enter_context(mock.patch.object(module_internal, "is_controller", False))
        stack.enter_context(mock.patch("builtins.print", side_effect=capture))
        if runner is not None:
            stack.enter_context(mock.patch.object(basic.AnsibleModule, "run_command", run_command))
            stack.enter_context(
                mock.patch.object(basic.AnsibleModule, "get_bin_path", get_bin_path)
            )
        with pytest.raises(SystemExit):
            main()
    return ModuleResult(json.loads(out[-1]))


def command_name(argv):
    return os.path.basename(argv[0])
