"""Makes ``ansible_collections.archety.edge`` importable when these tests run under plain pytest.

``ansible-test units`` runs them from the collection tree, where the import already works; from
the repository (``pytest tests/unit``) a temporary ``ansible_collections/archety/edge`` link to
the repository root stands in for that tree.
"""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile


def _collection_importable():
    try:
        return importlib.util.find_spec("ansible_collections.archety.edge.plugins") is not None
    except ImportError:
        return False


if not _collection_importable():
    _REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _ROOT = tempfile.mkdtemp(prefix="edge-units-")
    atexit.register(shutil.rmtree, _ROOT, True)
    os.makedirs(os.path.join(_ROOT, "ansible_collections", "archety"))
    os.symlink(_REPO, os.path.join(_ROOT, "ansible_collections", "archety", "edge"))
    sys.path.insert(0, _ROOT)
    for _name in [name for name in sys.modules if name.startswith("ansible_collections")]:
        del sys.modules[_name]
