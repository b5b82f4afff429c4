# The two commands of the README, each self-sufficient on a fresh machine:
#   make demo   create .venv, install, run the nightly job on generated demo data
#   make test   create .venv, install with the test tools, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
EXTRAS ?= dev,serve,spark
PIP     = $(PY) -m pip install --disable-pip-version-check -q

.PHONY: demo test test-all lint install system-deps clean

$(VENV)/.installed-$(EXTRAS): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(VENV)/bin/mmf demo

system-deps:
	bash tests/system-deps.sh

test: install system-deps
	$(PY) -m pytest -q

test-all: install system-deps
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check forecasting training registry tests benchmarks
	$(VENV)/bin/ruff format --check forecasting training registry tests benchmarks

clean:
	rm -rf lakehouse demo-data
