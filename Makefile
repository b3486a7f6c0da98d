# The stack's interface: make up / make down / make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Clients we did not write (kserve) that cannot share .venv's pins: their own environment (requirements-clients.txt).
CLIENTS_VENV := .venv-clients
CLIENTS_PY := $(CLIENTS_VENV)/bin/python
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed

.PHONY: up down status test unit lint clients sdk-ts archives clean bench bench-quick bench-engines reliability images test-containers

$(STAMP): requirements.txt requirements-dev.txt requirements-build.txt
	@echo "Creating the Python environment in $(VENV) (torch and torchvision come from local disk) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, torchvision, ts, fastapi, psycopg2, influxdb, skimage, onnx, onnxruntime, openvino, tritonclient.http" || { echo "Python environment is incomplete; see the pip output above"; exit 1; }
	@touch $(STAMP)

# About a minute and a half from PyPI on a clean machine (kserve and its ~65 pinned dependencies, 450 MB).
$(CLIENTS_STAMP): requirements-clients.txt
	@echo "Creating the client-compatibility environment in $(CLIENTS_VENV) (kserve's REST client) ..."
	@test -x $(CLIENTS_PY) || $(PYTHON) -m venv $(CLIENTS_VENV)
	@$(CLIENTS_PY) -m pip install --quiet -r requirements-clients.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(CLIENTS_PY) -c "import kserve" || { echo "$(CLIENTS_VENV) is incomplete; see the pip output above"; exit 1; }
	@touch $(CLIENTS_STAMP)

clients: $(CLIENTS_STAMP)

# The TypeScript client (sdk/typescript): openapi-typescript and openapi-fetch from npm, pinned by its lockfile.
TS_DIR := sdk/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed
$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	@echo "Installing the TypeScript client's tools in $(TS_DIR)/node_modules (npm ci, a few seconds) ..."
	@cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(TS_STAMP)

# Regenerate the TypeScript client's types from bridge/openapi.json and compile it with its examples (after a
# change of the API: `python -m bridge.openapi` first). A unit test fails while the committed types drift.
sdk-ts: $(TS_STAMP)
	@cd $(TS_DIR) && npm run --silent generate && npm run --silent build && echo "$(TS_DIR): types regenerated, compiled to $(TS_DIR)/dist"

# The browser that tests/integration/test_web_page.py drives (the web page at /): Debian's chromium and
# chromium-driver, installed when the driver is missing (apt-get; selenium is given both paths, downloads nothing).
CHROMIUM := /usr/bin/chromium /usr/bin/chromedriver
$(CHROMIUM): | $(STAMP)
	@$(PY) -m stack.browser

up: $(STAMP)
	@$(PY) -m stack up

down:
	@test -x $(PY) && $(PY) -m stack down || echo "nothing to stop (no $(VENV))"

status: $(STAMP)
	@$(PY) -m stack status

archives: $(STAMP)
	@$(PY) -m archive_scripts

# The whole suite: lint, unit tests, then integration tests against the real stack (started by the tests
# when it is not running, and stopped again afterwards). OIP_CLIENTS_PYTHON: the kserve client test runs with it
# (and fails rather than skips when it is broken).
test: lint $(CLIENTS_STAMP) $(TS_STAMP) $(CHROMIUM)
	@OIP_CLIENTS_PYTHON=$(CURDIR)/$(CLIENTS_PY) $(PY) -m pytest

# ruff on everything; mypy on the packages. handlers/ is checked on its own: TorchServe imports the
# archive's files by bare name (`import image_decoding`), while archive_scripts imports them as
# `handlers.image_decoding`, and one mypy run cannot hold a file under two module names.
lint: $(STAMP)
	@echo "ruff ..." && $(VENV)/bin/ruff check .
	@echo "mypy handlers/ ..." && cd handlers && ../$(VENV)/bin/mypy --config-file ../pyproject.toml *.py
	@echo "mypy bridge archive_scripts ops stack sdk ..." && $(VENV)/bin/mypy

unit: $(STAMP)
	@$(PY) -m pytest tests/unit

# Throughput and latency, side by side in one run: the in-process limit (the archive's engine, the best layout
# per load), TorchServe (eager PyTorch as served until now, and our archive) and the full stack through the bridge;
# then the recording path. The classifier (benchmarks/results/latest.*), then resnet18 with the seed prototype's
# design and TorchServe's stock handler beside it (latest-resnet18.*). Starts its own servers on ports
# 17070-18090 and stops them; bench-quick: the classifier only, short (latest-quick.*). About 35 minutes;
# bench-quick about 5.
bench: $(STAMP)
	@$(PY) -m benchmarks.throughput --model classifier
	@$(PY) -m benchmarks.throughput --model resnet18 --no-recording --no-serving-path

# Which engine is fastest for each model on this machine (forward only, 1-2 threads, batch 1 and 8) and what
# decoding costs: benchmarks/results/engines.{json,md}, the measurement each spec's engine is chosen from
# (a unit test holds them equal). About 10 minutes.
bench-engines: $(STAMP)
	@$(PY) -m benchmarks.engines

# The same, short (1 and 8 in flight, fewer layouts of the limit): every row still runs. For CI.
bench-quick: $(STAMP)
	@$(PY) -m benchmarks.throughput --quick

# Reliability (../shared/RELIABILITY.md): faults under load, bad inputs, fuzz, security — everything in
# tests/reliability — then a one-page report of each check with its figures. The fault tests start their own
# PostgreSQL, InfluxDB, TorchServe and bridges on free ports and never touch the shared stack.
# Results: .state/reliability/ (junit.xml, figures.jsonl, report.txt, the private services' logs). Fails when
# pytest fails or the report is NOT GREEN (a skip, xfail or error checked nothing: it is no pass either).
reliability: $(STAMP)
	@rm -rf .state/reliability && mkdir -p .state/reliability
	@$(PY) -m pytest tests/reliability --junitxml=.state/reliability/junit.xml; tests=$$?; \
	  $(PY) -m tests.reliability.report .state/reliability | tee .state/reliability/report.txt; report=$${PIPESTATUS[0]}; \
	  if [ $$tests -ne 0 ] || [ $$report -ne 0 ]; then \
	    echo "make reliability: failed (pytest exit $$tests, report $$([ $$report -eq 0 ] && echo GREEN || echo NOT GREEN))"; exit 1; fi

# The images (docker/api.Dockerfile: serving-api; the root Dockerfile: serving-model and its servingctl stage,
# serving-ops; docker/balancer.Dockerfile: serving-balancer), cached. Afterwards `docker build .` builds serving-model
# from the base and torch wheels prepared here (`docker build --network host .` on the dockerd started here).
# Installs Debian's docker.io and starts dockerd (host networking only) when needed, and makes a base image from
# Debian's packages when the official python image is not on this machine (stack/docker.py).
images: $(STAMP)
	@$(PY) -m stack.docker images

# The images built and run for real: non-root, read-only root, health checks (tests/containers; free ports).
test-containers: images
	@$(PY) -m pytest tests/containers -m containers

clean: down
	rm -rf .state model_store/*.mar model_store/manifest.json
