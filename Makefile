# The front door. CI runs `make test` (after .ci/prepare); nothing here needs more than
# Docker with Compose v2 and uv (bash .ci/prepare installs both on Debian).
SHELL := /bin/bash
.DEFAULT_GOAL := help

COMPOSE ?= docker compose
API_HOST_PORT ?= 8000
FAKE_GCS_HOST_PORT ?= 4443
PYTEST_ARGS ?=
# Each image's pinned, hashed requirements, from the one uv.lock (used in a loop over $$svc).
EXPORT = uv export --frozen --package model-$$svc --no-dev --no-emit-workspace --no-header \
	--format requirements-txt --quiet

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --- the stack ----------------------------------------------------------------
.PHONY: up down logs ps
up: ## build, start, wait until the API is ready, print its URL
	$(COMPOSE) up -d --build --wait --wait-timeout 300
	@echo "API ready: http://127.0.0.1:$(API_HOST_PORT)  (try: curl http://127.0.0.1:$(API_HOST_PORT)/predict/test)"

down: ## stop the stack and remove its containers and volume
	$(COMPOSE) down -v --remove-orphans

logs: ## follow the stack's logs
	$(COMPOSE) logs -f

ps: ## the stack's containers, the finished loader included
	$(COMPOSE) ps -a

# --- models -------------------------------------------------------------------
.PHONY: model publish
model: venv ## re-train and re-export models/iris_svc/v1 (reproducible)
	uv run --frozen python models/train.py

# make publish SRC=models/iris_svc/v2 URI=gs://ml-models/iris_svc/v2/
publish: venv ## upload a version directory to the running stack's bucket
	@test -n "$(SRC)" -a -n "$(URI)" || { echo "usage: make publish SRC=dir URI=gs://bucket/name/version/"; exit 2; }
	STORAGE_EMULATOR_HOST=http://127.0.0.1:$(FAKE_GCS_HOST_PORT) uv run --frozen python models/publish.py $(SRC) $(URI)

# --- benchmarks ---------------------------------------------------------------
.PHONY: bench-startup bench-loader
bench-startup: venv ## cold start: `docker compose up -d` -> API ready, median of RUNS (5)
	uv run --frozen python loadtest/bench_startup.py --runs $(or $(RUNS),5)

bench-loader: venv ## 1 GiB from fake-gcs: curl vs plain client vs our loader -> loadtest/results/loader.md
	uv run --frozen python loadtest/bench_loader.py --runs $(or $(RUNS),3) --out loadtest/results/loader.md

# --- development --------------------------------------------------------------
.PHONY: venv test test-unit test-integration test-e2e lint fmt lock
venv:
	@uv sync --frozen --quiet

test: venv lint ## everything: lint, unit, integration (real processes), e2e (real Compose)
	uv run --frozen pytest $(PYTEST_ARGS)

test-unit: venv ## no network, no Docker
	uv run --frozen pytest tests/unit $(PYTEST_ARGS)

test-integration: venv ## fake-gcs-server binary, loader and API as processes on loopback
	uv run --frozen pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv ## the compose stack in Docker
	uv run --frozen pytest tests/e2e $(PYTEST_ARGS)

lint: venv ## ruff, and the per-image lock files match uv.lock
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	@for svc in api loader; do \
	  $(EXPORT) | cmp -s - $$svc/requirements.lock \
	    || { echo "$$svc/requirements.lock is stale: run make lock"; exit 1; }; \
	done

fmt: venv ## format and auto-fix
	uv run --frozen ruff format .
	uv run --frozen ruff check --fix .

lock: ## re-resolve uv.lock and export each image's hashed requirements
	uv lock
	@for svc in api loader; do $(EXPORT) > $$svc/requirements.lock; done
