# Everything an operator or CI needs, from a fresh Debian-like machine, as root.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
VENV39 := .venv39
PY := $(VENV)/bin/python
PY39_BASE ?= $(shell ls -d /root/.pyenv/versions/3.9.* 2>/dev/null | sort -V | tail -n 1)/bin/python3.9
HOSTS ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

APT_PACKAGES := openssh-server sudo iproute2 procps util-linux sqlite3 rsync

.PHONY: help setup system-packages venv venv39 checkout-readable lint test test-units test-lab test-playbooks \
        test-molecule test-quality lab-up lab-down demo build clean bench

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-packages: ## Install the Debian packages the lab needs (root)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: requirements-dev.txt lab/pyproject.toml backend/pyproject.toml files/relay/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -e lab -e backend -e files/relay
	touch $@

venv: $(VENV)/.installed ## Controller virtual environment (Python 3.11)

$(VENV39)/.installed: files/relay/pyproject.toml
	@test -x "$(PY39_BASE)" || { echo "Python 3.9 not found (pyenv install 3.9, or set PY39_BASE)"; exit 2; }
	test -x $(VENV39)/bin/python || $(PY39_BASE) -m venv $(VENV39)
	$(VENV39)/bin/python -m pip install -q --upgrade pip
	$(VENV39)/bin/python -m pip install -q -e files/relay pytest pytest-asyncio hatchling
	touch $@

venv39: $(VENV39)/.installed ## Python 3.9 environment for the relay's tests (macOS's python3)

# The lab's hosts and the tests run the checkout's Python and lab package under other users'
# uids (the shard users, nobody), so every user must be able to enter the checkout: a clone
# made in `mktemp -d` is root's alone until opened here.
checkout-readable:
	chmod a+rx $(CURDIR)
	@setpriv --reuid=65534 --regid=65534 --clear-groups test -r $(CURDIR)/Makefile || { \
	  echo "other users cannot reach $(CURDIR): let every user enter each folder above it" \
	       "(chmod a+x), or clone the project elsewhere"; exit 2; }

setup: system-packages venv venv39 checkout-readable ## All set-up: packages, virtual environments

lint: venv ## ruff, ansible-lint (production profile), collection build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ansible-lint --profile production
	$(VENV)/bin/ansible-galaxy collection build --force --output-path build/ . >/dev/null

test-units: setup ## Tests of the roles' specs, the relay (3.11 and 3.9), backend, modules
	$(PY) -m pytest -q tests/roles tests/relay tests/backend tests/modules
	$(VENV39)/bin/python -m pytest -q tests/relay

test-lab: setup ## Tests of the lab and its macOS stand-ins
	$(PY) -m pytest -q tests/lab

test-playbooks: setup ## add_shard.yml on a lab: bad input, person-only steps, --check, rerun
	$(PY) -m pytest -q tests/playbooks

MOLECULE_SCENARIOS := add_shard bad_release host_lost dry_run rolling

test-molecule: setup ## Molecule scenarios (check, converge, idempotence, verify)
	for scenario in $(MOLECULE_SCENARIOS); do $(VENV)/bin/molecule test -s $$scenario || exit 1; done

test-quality: venv ## ansible-test sanity and units, ansible-doc, argument specs, from a built tree
	tests/quality/run.sh

test: lint test-quality test-units test-lab test-playbooks test-molecule ## The whole test suite

lab-up: setup ## Start the lab (HOSTS simulated Mac minis, default 2)
	$(VENV)/bin/edge-lab up --hosts $(HOSTS)

lab-down: ## Stop the lab; no lab process is left behind
	@if [ -x $(VENV)/bin/edge-lab ]; then $(VENV)/bin/edge-lab down; fi

demo: setup ## Lab up, add a shard end to end, and a round trip through it
	$(PY) -m edge_lab.demo

bench: setup ## Relay benchmarks: latency, idle CPU, memory, backlog drain, faults, send cost (~8 min)
	$(PY) bench/inbound_bench.py
	$(PY) bench/send_overhead.py

build: venv ## Build the collection tarball into build/
	$(VENV)/bin/ansible-galaxy collection build --force --output-path build/ .

clean: lab-down ## Remove build products and virtual environments
	rm -rf build dist $(VENV) $(VENV39) .lab
