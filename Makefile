# nrs: two commands on a fresh machine, `make figures` and `make test`.
# Both create the virtual environment (.venv) themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NRS := $(VENV)/bin/nrs
STAMP := $(VENV)/.installed

# make figures DATASETS="mnist fashion-mnist" DATA_ROOT=../shared/data
DATASETS ?= mnist-mini
DATA_ROOT ?=

.PHONY: install test figures compare

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

figures: $(STAMP)
	$(NRS) figures $(addprefix --dataset ,$(DATASETS)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

# make compare DATASETS=mnist DATA_ROOT=../shared/data: five ways to pick network and sigma (docs/results.md)
compare: $(STAMP)
	$(NRS) compare $(addprefix --dataset ,$(DATASETS)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))
