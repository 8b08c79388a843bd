# Quick start: `make demo` runs the main job, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo office test test-quick bench proof clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/two-ministries/run.py

office: $(STAMP)  # two ministries with real Postfix and Dovecot (root; Debian packages: see examples/office/run.py)
	$(BIN)/python examples/office/run.py

# One pytest worker per core (pytest-xdist), whole modules to a worker so that a module's gateways
# are built once; most tests wait on real servers, so two workers on two cores nearly halve the time.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m bench.crypto
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.bridge
	$(BIN)/python -m bench.bridge --readers 0   # the bridge in one process: its memory, its time

proof: $(STAMP)
	$(BIN)/python -m proof.run

.PHONY: fuzz
fuzz: $(STAMP)  # tests/fuzz with 20 times the examples (HYPOTHESIS_PROFILE=long), about a quarter of an hour
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q --timeout=3600 tests/fuzz

clean:
	rm -rf $(VENV) .pytest_cache
