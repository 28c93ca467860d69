# t3backupd developer entry points. Each target does its own setup.
#
# The venv must be readable by every user: workers run `python -m t3backupd.worker`
# after dropping to the user's uid. As root it therefore lives under /opt (not in a
# checkout that may sit under /root, mode 0700) and the package is installed into it,
# not linked editable. It is built from Debian's /usr/bin/python3, never pyenv's.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
BASE_PYTHON ?= /usr/bin/python3
UID_NOW := $(shell id -u)
ifeq ($(UID_NOW),0)
VENV ?= /opt/t3backupd-dev/venv
else
VENV ?= $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv sqlite3 prometheus util-linux procps passwd systemd fuse3 python3-pyfuse3 restic openssh-server openssh-client
DEMO_DIR ?= /var/tmp/t3backupd-demo
DEMO_USER ?= t3demo
# The dev-only distribution (t3backupd_dev: sample databases, live writer, demo): installed
# into the dev venv only, never part of the t3backupd wheel.
DEVTOOLS := tests/devtools

.PHONY: help apt venv install test lint typecheck unit demo demo-clean bench bench-history man

help:
	@echo "make demo   - sandbox with a live T3-shaped database, daemon in the foreground"
	@echo "make test   - ruff, mypy --strict, pytest (as root: real users, real daemon)"
	@echo "make bench  - benchmarks (prints a Markdown table, writes bench/results.json)"
	@echo "make bench-history - offsite history per engine (restic, borg) over simulated days"
	@echo "make man    - regenerate docs/t3backupd.8 from the command line definitions"

# Tools only: a temporary policy-rc.d keeps package services (prometheus) from starting.
apt:
ifeq ($(UID_NOW),0)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; \
	  policy=/usr/sbin/policy-rc.d; made_policy=""; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; made_policy=1; fi; \
	  status=0; apt-get install -y -qq --no-install-recommends $$missing >/dev/null || status=$$?; \
	  if [ -n "$$made_policy" ]; then rm -f $$policy; fi; \
	  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  exit $$status; \
	fi
else
	@for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
	    || echo "note: Debian package $$p is missing (run make as root to install it)"; \
	done
endif

$(VENV)/.deps: pyproject.toml | apt
	$(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q '.[test]'
	chmod -R a+rX $(VENV)
	touch $@

venv: $(VENV)/.deps

# Reinstalled on every run (not editable, see above); takes a few seconds. build/ goes
# first: setuptools copies whatever is left in build/lib into the wheel, so a module
# deleted from the tree would otherwise still be installed.
install: apt venv
	rm -rf build $(DEVTOOLS)/build
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall ./$(DEVTOOLS)
	chmod -R a+rX $(VENV)

lint: install
	$(VENV)/bin/ruff check t3backupd tests $(wildcard bench)
	$(VENV)/bin/ruff format --check t3backupd tests $(wildcard bench)

typecheck: install
	$(VENV)/bin/mypy --strict t3backupd $(DEVTOOLS)/t3backupd_dev

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m t3backupd_dev.demo --dir $(DEMO_DIR) --user $(DEMO_USER)

demo-clean: install
	$(PY) -m t3backupd_dev.demo --dir $(DEMO_DIR) --user $(DEMO_USER) --clean

# The man page is generated from the argparse definitions; tests fail if it is stale.
man: install
	$(PY) -m t3backupd.root.manpage docs/t3backupd.8

bench: install
	$(PY) bench/run.py --json bench/results.json $(BENCH_ARGS)

# Engines and compressors the history benchmark compares (Debian's own packages).
bench-history: install
ifeq ($(UID_NOW),0)
	@for p in restic borgbackup zstd; do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
	    || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$p" >/dev/null \
	         || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$p" >/dev/null; }; }; \
	done
endif
	$(PY) bench/history.py --json bench/history.json $(BENCH_ARGS)
