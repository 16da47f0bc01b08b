#!/usr/bin/env bash
# The collection's quality gates, run from a copy of the collection laid out as Ansible needs it
# (<tmp>/ansible_collections/archety/edge): ansible-test sanity and units, ansible-doc of every
# module and filter, and the roles' argument specs against their defaults.
#
#   tests/quality/run.sh            (make test-quality)
#
# Offline-safe once primed: the sanity tools come from the dev venv's pinned packages
# (requirements-dev.txt), and ansible-test's own virtual environments are cached in
# ~/.ansible/test/venv after their first creation.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
PYTHON_VERSION=3.11

# Sanity tests left out, and why:
# - changelog: the collection keeps CHANGELOG.md by hand, not antsibull-changelog fragments.
# - pslint: there is no PowerShell in the collection (and no pwsh here).
# - shellcheck: needs the shellcheck binary, which is not part of the dev environment.
SKIPPED_SANITY=(changelog pslint shellcheck)

work="$(mktemp -d -t edge-quality.XXXXXX)"
trap 'rm -rf "$work"' EXIT
tree="$work/ansible_collections/archety/edge"
mkdir -p "$tree"

# The collection as galaxy.yml builds it (its build_ignore list), plus the tests that
# ansible-test runs from inside the tree (tests/unit, tests/sanity).
excludes=()
while IFS= read -r pattern; do
    excludes+=(--exclude "/$pattern")
done < <("$VENV_BIN/python" - "$REPO/galaxy.yml" <<'EOF'
import sys

import yaml

for pattern in yaml.safe_load(open(sys.argv[1]))["build_ignore"]:
    if pattern != "tests":
        print(pattern.replace("**/", ""))
EOF
)
rsync -a "${excludes[@]}" --exclude '__pycache__' --exclude '/tests/*' \
    --include '/tests/' "$REPO/" "$tree/"
mkdir -p "$tree/tests"
for part in unit sanity; do
    if [ -d "$REPO/tests/$part" ]; then
        rsync -a --exclude '__pycache__' "$REPO/tests/$part" "$tree/tests/"
    fi
done
# ansible-test takes the files git knows as the collection's files when it finds a repository.
git -C "$tree" init -q
git -C "$tree" add -A

# ansible-test fetches pip's bootstrap script from ci-files.testing.ansible.com to fill its
# virtual environments. Without that host, a stand-in in its cache bootstraps pip with the
# standard library's ensurepip and installs the requested pip from the configured index.
pip_cache="$HOME/.ansible/test/cache"
pip_version="$("$VENV_BIN/python" -c 'from ansible_test._internal.python_requirements import PIP_VERSION
print(PIP_VERSION)' 2>/dev/null || echo 24.2)"
pip_bootstrap="$pip_cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$pip_bootstrap" ]; then
    mkdir -p "$pip_cache"
    cp "$REPO/tests/quality/get_pip_offline.py" "$pip_bootstrap"
fi

export PATH="$VENV_BIN:$PATH"
cd "$tree"
status=0
step() {
    echo "== $*"
    if ! "$@"; then
        echo "FAILED: $*"
        status=1
    fi
}

skip_args=()
for name in "${SKIPPED_SANITY[@]}"; do
    skip_args+=(--skip-test "$name")
done
echo "sanity tests skipped: ${SKIPPED_SANITY[*]} (reasons in $0)"
step ansible-test sanity --local --python "$PYTHON_VERSION" "${skip_args[@]}" --color no
step ansible-test units --local --python "$PYTHON_VERSION" --color no

# Every module and filter renders with ansible-doc, from the built tree.
echo "== ansible-doc of every module and filter"
export ANSIBLE_COLLECTIONS_PATH="$work"
for kind in module filter; do
    names=$(ansible-doc -t "$kind" -l archety.edge | awk '{print $1}')
    if [ -z "$names" ]; then
        echo "FAILED: ansible-doc lists no $kind of archety.edge"
        status=1
    fi
    for name in $names; do
        if ansible-doc -t "$kind" "$name" >/dev/null; then
            echo "ansible-doc -t $kind $name: renders"
        else
            echo "FAILED: ansible-doc -t $kind $name"
            status=1
        fi
    done
done

# Each role's meta/argument_specs.yml against its defaults.
step python -m pytest -q -p no:cacheprovider "$REPO/tests/roles"

exit "$status"
