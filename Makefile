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
APT_PACKAGES := python3-venv sqlite3 prometheus util-linux procps passwd systemd fuse3 python3-pyfuse3 openssl restic openssh-server openssh-client borgbackup
DEMO_DIR ?= /var/tmp/t3backupd-demo
DEMO_USER ?= t3demo
# The dev-only distribution (t3backupd_dev: sample databases, live writer, demo): installed
# into the dev venv only, never part of the t3backupd wheel.
DEVTOOLS := tests/devtools

# Only for `make deb` / `make test-systemd` (kept out of APT_PACKAGES: `make test` stays lean).
DEB_APT_PACKAGES := debhelper dpkg-dev fakeroot lintian python3.11-venv
VM_APT_PACKAGES := debootstrap qemu-system-x86 e2fsprogs zstd
# Power cuts in make test-systemd (each one is one more VM boot).
VM_CUTS ?= 4
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB_BUILD := $(CURDIR)/build/deb
DEB := $(CURDIR)/build/t3backupd_$(VERSION)_all.deb
# The Debian Maintainer (debian/control) and the changelog's signer come from this one
# place, set at build time the way dch(1) and debmake read them: DEBFULLNAME and DEBEMAIL
# (`make deb DEBFULLNAME="Jane Doe" DEBEMAIL=jane@example.org`, or in the environment).
# packaging/debian carries the placeholder @DEB_MAINTAINER@; the defaults name the project.
DEBFULLNAME ?= t3backupd contributors
DEBEMAIL ?= maintainers@t3backupd.example
export DEB_MAINTAINER := $(DEBFULLNAME) <$(DEBEMAIL)>

.PHONY: help apt apt-deb apt-vm venv install test lint typecheck unit demo demo-clean bench \
	bench-tools bench-history bench-pipeline bench-pass man deb deb-source wheels test-systemd

help:
	@echo "make demo   - sandbox with a live T3-shaped database, daemon in the foreground"
	@echo "make test   - ruff, mypy --strict, pytest (as root: real users, real daemon)"
	@echo "make bench  - benchmarks (prints a Markdown table, writes bench/results.json)"
	@echo "make bench-pass - the pass vs the old VACUUM INTO and cp+sync, writer p99, memory (root)"
	@echo "make bench-history - offsite history per engine (restic, borg) over simulated days"
	@echo "make bench-pipeline - offsite through the real CLI per engine (root; ~1 GB database)"
	@echo "make man    - regenerate docs/t3backupd.8 from the command line definitions"
	@echo "make deb    - build/t3backupd_<version>_all.deb (dpkg-buildpackage), lintian"
	@echo "make test-systemd - the .deb under a real systemd in a Debian 12 qemu VM"

# Tools only: a temporary policy-rc.d keeps package services (prometheus) from starting.
apt: PACKAGES := $(APT_PACKAGES)
apt-deb: PACKAGES := $(DEB_APT_PACKAGES)
apt-vm: PACKAGES := $(DEB_APT_PACKAGES) $(VM_APT_PACKAGES)
apt apt-deb apt-vm:
ifeq ($(UID_NOW),0)
	@missing=""; for p in $(PACKAGES); do \
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
	@for p in $(PACKAGES); do \
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

# The pass through the real CLI (as root: it creates a user) against the old script's
# command and cp + sync at 20 MB, 100 MB and 1 GB, idle and beside a busy core (issue 23).
bench-pass: install
	$(PY) bench/pass.py --json bench/pass.json $(BENCH_ARGS)

# Engines and compressors the offsite benchmarks compare (Debian's own packages).
bench-tools: install
ifeq ($(UID_NOW),0)
	@for p in restic borgbackup zstd; do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
	    || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$p" >/dev/null \
	         || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$p" >/dev/null; }; }; \
	done
endif

bench-history: bench-tools
	$(PY) bench/history.py --json bench/history.json $(BENCH_ARGS)

# Offsite through the real CLI per engine (as root: it creates a user): repository size,
# upload and restore times, an hourly pass's CPU and the live writer's p99 during it.
bench-pipeline: bench-tools
	$(PY) bench/pipeline.py --json bench/pipeline.json $(BENCH_ARGS)

# The wheels of the program and of every dependency (the only step that needs the package
# registry); dpkg-buildpackage then builds offline from them.
wheels: install
	rm -rf $(DEB_BUILD)/wheels && mkdir -p $(DEB_BUILD)/wheels
	$(PY) -m pip wheel -q --no-build-isolation -w $(DEB_BUILD)/wheels .

# A Debian package from this checkout (tracked and new files), built with debhelper in
# build/deb/src, then checked with lintian (overrides explained in packaging/debian/).
deb: apt-deb wheels deb-source
	cp -r $(DEB_BUILD)/wheels $(DEB_BUILD)/src/wheels
	cd $(DEB_BUILD)/src && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL dpkg-buildpackage -b -us -uc -rfakeroot > $(DEB_BUILD)/build.log 2>&1 \
	  || { tail -40 $(DEB_BUILD)/build.log >&2; exit 1; }
	mv $(DEB_BUILD)/t3backupd_$(VERSION)_all.deb $(DEB)
	lintian --allow-root --fail-on error,warning --display-info $(DEB)
	@echo "built $(DEB)"

# The source tree dpkg-buildpackage builds from (build/deb/src): this checkout and
# debian/ with the Maintainer filled in (DEBFULLNAME, DEBEMAIL above). No tools needed.
deb-source:
	@case "$(DEBFULLNAME)" in ""|*[\<\>]*) echo "DEBFULLNAME must be a name: '$(DEBFULLNAME)'" >&2; exit 2;; esac
	@case "$(DEBEMAIL)" in *[\<\>\ ]*|*@*@*|@*|*@) echo "DEBEMAIL must be an address: '$(DEBEMAIL)'" >&2; exit 2;; *@*) ;; \
	  *) echo "DEBEMAIL must be an address: '$(DEBEMAIL)'" >&2; exit 2;; esac
	rm -rf $(DEB_BUILD)/src && mkdir -p $(DEB_BUILD)/src
	git ls-files -z -co --exclude-standard | grep -zv '^build/' | xargs -0 tar -cf - | tar -xf - -C $(DEB_BUILD)/src
	cp -r packaging/debian $(DEB_BUILD)/src/debian
	perl -pi -e 's/\@DEB_MAINTAINER\@/$$ENV{DEB_MAINTAINER}/g' \
	  $(DEB_BUILD)/src/debian/control $(DEB_BUILD)/src/debian/changelog
	test "$$(dpkg-parsechangelog -l $(DEB_BUILD)/src/debian/changelog -S Version)" = "$(VERSION)" \
	  || { echo "packaging/debian/changelog: version is not $(VERSION) (pyproject.toml)" >&2; exit 1; }
	test "$$(dpkg-parsechangelog -l $(DEB_BUILD)/src/debian/changelog -S Maintainer)" = "$$DEB_MAINTAINER"

# The .deb under a real systemd: Debian 12 in qemu (KVM if it boots here, else TCG), image
# cached in /var/tmp/t3backupd-vm; every guest check prints a PASS/FAIL line (tests/vm/).
test-systemd: apt-vm deb
	$(BASE_PYTHON) tests/vm/run.py --deb $(DEB) --cuts $(VM_CUTS)
