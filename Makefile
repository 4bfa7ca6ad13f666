# docteur — the two commands a user needs are `make run` and `make test`
# (`make check` is the quick one for the edit loop: lint and the tests not marked slow).
# Everything they need is installed from here: apt packages when missing,
# the virtualenv, the guest artifacts.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DOCTEUR := $(VENV)/bin/docteur
BUILD := build
IMAGE ?= disk.img
APT_PACKAGES := git qemu-system-x86
STAMP := $(VENV)/.installed

.PHONY: setup host-packages guest image run verify test check lint bench clean

setup: $(STAMP)

# apt only when something is missing, so a ready machine needs no root or network.
host-packages:
	@missing=""; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | host-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

guest: setup
	$(PY) -m docteur.vm.guestbuild --build-dir $(BUILD)

image: setup
	$(DOCTEUR) make file://$(CURDIR) $(IMAGE)
	$(DOCTEUR) verify $(IMAGE)

run: setup guest image
	$(DOCTEUR) run $(IMAGE) --filename /README.md

LINTED := builder cli guest vm tests

lint: setup
	$(VENV)/bin/ruff check $(LINTED)

# Everything, VM boots included (CI runs this).
test: setup guest
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/pytest -q

# The edit loop: seconds, not minutes (no VM boot, no big image).
check: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup guest
	$(PY) -m tests.bench

clean:
	rm -rf $(BUILD) $(IMAGE) .pytest_cache
