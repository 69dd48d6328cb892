# `make run`: install what is missing, then boot the default kernel and print the guest's uname -a.
# `make test`: the same setup, then the whole test suite (real kernels under QEMU).
VENV   := .venv
# Debian's interpreter, which scripts/ensure-deps installs, rather than whichever python3 comes
# first on PATH (a pyenv build with a shared libpython starts and runs `initramfs ls` 3% slower).
# Another is fine: make PYTHON=python3.12 test
PYTHON ?= /usr/bin/python3

.PHONY: run test setup deps bench clean

run: setup
	$(VENV)/bin/bootlab run -- uname -a

test: setup
	$(VENV)/bin/pytest -q

setup: deps $(VENV)/.installed

deps:
	@scripts/ensure-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@# A 3.11 venv comes with setuptools, which bootlab does not use (pip builds in isolation);
	@# its distutils-precedence.pth costs every Python start 1.5 ms.
	$(VENV)/bin/pip uninstall -q -y setuptools
	touch $@

bench: setup
	$(VENV)/bin/python bench/boot.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
