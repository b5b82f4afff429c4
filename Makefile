# The two commands of the README, each self-sufficient on a fresh machine:
#   make demo   create .venv, install, run the nightly job on generated demo data
#   make test   create .venv, install with the test tools, run the test suite
#   make lint   ruff check + ruff format --check (CI runs it before the tests)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# Extras per command: the demo needs no torch; the tests exercise everything, the deep
# model included (TEST_EXTRAS=dev,serve,spark leaves torch out and skips its tests).
DEMO_EXTRAS ?= dev,serve,spark
TEST_EXTRAS ?= dev,serve,spark,deep
EXTRAS ?= $(DEMO_EXTRAS)
PIP     = $(PY) -m pip install --disable-pip-version-check -q
# PyTorch (the deep extra) is a ~3 GB download with its CUDA libraries, and pip's own
# cache does not keep it here: its wheels are kept in WHEELS and installed from there.
WHEELS ?= $(HOME)/.cache/mmf-wheels

.PHONY: demo test test-all lint install system-deps clean

$(VENV)/.installed-$(EXTRAS): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	case ",$(EXTRAS)," in *,deep,*|*,all,*) \
	    $(PY) -m pip download --disable-pip-version-check -q -d "$(WHEELS)" "torch>=2.3" && \
	    $(PIP) --no-index --find-links "$(WHEELS)" "torch>=2.3";; esac
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo:
	$(MAKE) install EXTRAS="$(DEMO_EXTRAS)"
	$(VENV)/bin/mmf demo

system-deps:
	bash tests/system-deps.sh

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a
# time (its module fixtures built once): 17.5 min with 2 on this 2-core machine against
# about 25 serially, as much of it waits on subprocesses and JVMs. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: system-deps
	$(MAKE) install EXTRAS="$(TEST_EXTRAS)"
	$(PYTEST)

test-all: system-deps
	$(MAKE) install EXTRAS="$(TEST_EXTRAS)"
	$(PYTEST) -m "slow or not slow"

# The same install as `make test` (CI runs `make lint` then `make test`: one install).
lint:
	$(MAKE) install EXTRAS="$(TEST_EXTRAS)"
	$(VENV)/bin/ruff check forecasting training registry tests benchmarks
	$(VENV)/bin/ruff format --check forecasting training registry tests benchmarks

clean:
	rm -rf lakehouse demo-data
