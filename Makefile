# The stack's interface: make up / make down / make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up down status test unit archives clean

$(STAMP): requirements.txt requirements-dev.txt requirements-build.txt
	@echo "Creating the Python environment in $(VENV) (torch and torchvision come from local disk) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, torchvision, ts, fastapi, psycopg2, influxdb, skimage" || { echo "Python environment is incomplete; see the pip output above"; exit 1; }
	@touch $(STAMP)

up: $(STAMP)
	@$(PY) -m stack up

down:
	@test -x $(PY) && $(PY) -m stack down || echo "nothing to stop (no $(VENV))"

status: $(STAMP)
	@$(PY) -m stack status

archives: $(STAMP)
	@$(PY) -m archive_scripts

# The whole suite: unit tests, then integration tests against the real stack (started by the tests
# when it is not running, and stopped again afterwards).
test: $(STAMP)
	@$(PY) -m pytest

unit: $(STAMP)
	@$(PY) -m pytest tests/unit

clean: down
	rm -rf .state model_store/*.mar model_store/manifest.json
