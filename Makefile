# The two commands a new user needs: `make serve` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test bench soak sync-drift demo setup setup-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV); ./scripts/setup-system.sh venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	./scripts/setup-system.sh test

setup-serve: $(STAMP)
	./scripts/setup-system.sh serve

serve: setup-serve
	$(VENV)/bin/cloudrec serve $(if $(CONFIG),--config $(CONFIG))

# Two pytest-xdist workers, not `-n auto`: the end-to-end tests publish and record real-time
# media, and their frame-rate and timing bounds hold while each test has about a core to itself.
# On this 2-core box auto would be 2 anyway; on a bigger one, TEST_WORKERS=auto is the choice.
# --dist loadgroup: tests marked xdist_group(name) share one worker, the rest spread.
TEST_WORKERS ?= 2

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/cloudrec
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

# Not in CI: two hours (SOAK_SECONDS) of a 2-node cluster with publishers coming and going.
SOAK_SECONDS ?= 7200
soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) bench/soak.py

# Not in CI: an hour (SYNC_SECONDS) of a flash + beep publisher, lip sync per 5 minutes.
SYNC_SECONDS ?= 3600
sync-drift: setup
	SYNC_SECONDS=$(SYNC_SECONDS) $(PY) bench/sync_drift.py

demo: setup-serve
	$(VENV)/bin/cloudrec demo

clean:
	rm -rf $(VENV) data build *.egg-info
