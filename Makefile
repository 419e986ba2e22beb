# nrs: two commands on a fresh machine, `make figures` and `make test`.
# Both create the virtual environment (.venv) themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NRS := $(VENV)/bin/nrs
STAMP := $(VENV)/.installed

.PHONY: install test

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q
