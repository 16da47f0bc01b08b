"""Makes the collection importable before pytest imports these tests (see module_support).

The helpers live in module_support, not here: every folder of tests has a conftest.py, and
pytest imports them all under the one name ``conftest``, so ``from conftest import ...`` finds
whichever came last when several folders run together.
"""

import module_support  # noqa: F401  (builds the ansible_collections tree on import)
