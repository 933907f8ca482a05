# The two commands a new user needs: `make serve` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test bench demo setup setup-serve clean

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

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

demo: setup-serve
	$(VENV)/bin/cloudrec demo

clean:
	rm -rf $(VENV) data build *.egg-info
