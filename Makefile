# Greenroom: `make run` serves the demo models, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRITON_VENV := .venv-tritonclient
STAMP := $(VENV)/.installed

.PHONY: install run test lint proto proto-check bench bench-peers clean tritonclient postgres chromium clients

install: $(STAMP)

$(STAMP): pyproject.toml proto/python/pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./proto/python -e ./clients/python -e '.[dev]'
	touch $(STAMP)

# Triton's own client lives in its own virtualenv: it pins protobuf 6 and ships stubs
# whose symbols clash with ours, so the tests run it as a separate program.
tritonclient: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: tests/tritonclient-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q -r tests/tritonclient-requirements.txt
	touch $@

# PostgreSQL server binaries for the ledger's PostgreSQL tests (Debian's package; the
# tests start a throwaway cluster of their own). Does nothing when they are there.
postgres:
	bash .ci/postgres.sh

# Debian's Chromium, headless, for the HTML report tests: they screenshot the page and
# check its pixels. Does nothing when /usr/bin/chromium is there.
chromium:
	bash .ci/chromium.sh

# Clients in other languages, generated from proto/ and built (the tests build them too).
clients: install
	$(MAKE) -C clients/go build PYTHON=$(abspath $(PY))
	$(MAKE) -C clients/java build PYTHON=$(abspath $(PY))
	$(MAKE) -C clients/node build
	$(MAKE) -C runners/go build

run: install
	$(VENV)/bin/greenroom demo

# Two pytest processes: on a 2-core machine the suite took 15 min in one and 10.5 in two
# (most tests wait on gateways and runners they start). TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2

# The clients are built first: two test processes would otherwise build them at once.
test: install tritonclient postgres chromium clients
	GREENROOM_TRITON_PYTHON=$(TRITON_VENV)/bin/python $(PY) -m pytest -q -n $(TEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway runners clients/python/greenroom_client tests bench

proto: install
	PYTHON=$(PY) proto/generate.sh

proto-check: install
	@tmp=$$(mktemp -d); PYTHON=$(PY) proto/generate.sh $$tmp >/dev/null && \
	if diff -r $$tmp/greenroom_proto proto/python/greenroom_proto; then \
		echo "generated code is up to date"; rm -rf $$tmp; \
	else echo "generated code is stale: run 'make proto' and commit" >&2; rm -rf $$tmp; exit 1; fi

# Benchmarks (bench/README.md): the gateway against its floors, about 5 minutes; with
# bench-peers, MLServer too (installed once into its own virtualenv, bench/.venv-mlserver).
bench: install
	$(PY) bench/run.py

bench-peers: install
	$(PY) bench/run.py --peers

clean:
	rm -rf $(VENV) $(TRITON_VENV) .greenroom bench/.tools bench/.venv-mlserver bench/results/logs \
		.pytest_cache .mypy_cache .ruff_cache
	$(MAKE) -C clients/node clean
	$(MAKE) -C clients/go clean
	$(MAKE) -C clients/java clean
