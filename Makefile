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
	@awk -F':.*## ' '/^# --- /{h = $$0; sub(/^# --- /, "", h); sub(/ -+$$/, "", h); printf "%s\n", h} \
	  /^[a-z0-9-]+:.*## /{printf "  make %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- the stack ----------------------------------------------------------------
.PHONY: up up-gcs down logs ps why
WAIT_SECONDS ?= 300
# For compose command $(1): each service's state, and the last error line of the loader and
# of the API (what `up` prints when the stack does not come up).
why_for = $(1) ps -a --format 'table {{.Service}}\t{{.Status}}'; \
	for svc in loader api; do \
	  $(1) logs --no-log-prefix $$svc 2>/dev/null | grep -E '\b(ERROR|CRITICAL)\b' | tail -n 1 \
	    | sed "s/^/$$svc: /"; \
	done

up: ## build, start, wait until the API is ready, print its URL (or why it is not)
	$(COMPOSE) up -d --build --wait --wait-timeout $(WAIT_SECONDS) || { $(call why_for,$(COMPOSE)); exit 1; }
	@echo "API ready: http://127.0.0.1:$(API_HOST_PORT)  (try: curl http://127.0.0.1:$(API_HOST_PORT)/predict/test)"

why: ## why the stack is not ready: each service's state, the loader's and API's last error
	@$(call why_for,$(COMPOSE))

# GCS_CREDENTIALS_FILE=key.json MODEL_URI=gs://bucket/name/version/ make up-gcs  (docs/operations.md)
up-gcs: ## like up, but the loader reads real GCS with the key file GCS_CREDENTIALS_FILE
	$(COMPOSE) -f compose.yaml -f compose.gcs.yaml up -d --build --wait --wait-timeout $(WAIT_SECONDS) \
	  || { $(call why_for,$(COMPOSE) -f compose.yaml -f compose.gcs.yaml); exit 1; }
	@echo "API ready: http://127.0.0.1:$(API_HOST_PORT)  (serving $(MODEL_URI))"

down: ## stop the stack and remove its containers and volume
	$(COMPOSE) down -v --remove-orphans

logs: ## follow the stack's logs
	$(COMPOSE) logs -f

ps: ## the stack's containers, the finished loader included
	$(COMPOSE) ps -a

# --- rollouts (docs/operations.md, "Updating a model") ------------------------
# make rollout MODEL_URI=gs://ml-models/iris_svc/v2/    make rollback
ROLLOUT_TIMEOUT ?= 180
ROLLOUT = uv run --frozen python proxy/rollout.py --compose "$(COMPOSE)" --timeout $(ROLLOUT_TIMEOUT)
.PHONY: rollout rollback
rollout: venv ## replace the API replicas one by one with MODEL_URI's version (no failed request)
	@test -n "$(MODEL_URI)" || { echo "usage: make rollout MODEL_URI=gs://bucket/name/version/"; exit 2; }
	$(ROLLOUT) --model-uri "$(MODEL_URI)"

rollback: venv ## roll out again the version served before the current one
	$(ROLLOUT) --rollback

# --- models -------------------------------------------------------------------
.PHONY: models bench-models publish keys
models: venv ## rebuild the committed models: iris_svc and the zoo (models/README.md), byte for byte
	uv run --frozen python -m model_tools.train
	uv run --frozen python -m model_tools.zoo

# Too big for the repository and the emulator image: written outside models/, published by hand
# (make publish SRC=build/models/mlp_bench/v1 URI=gs://ml-models/mlp_bench/v1/).
BENCH_MODELS_DIR ?= build/models
bench-models: venv ## build mlp_bench (~36 MB) and large_mlp (256 MiB) into build/models/
	uv run --frozen python -m model_tools.zoo --out $(BENCH_MODELS_DIR) mlp_bench large_mlp

# make publish SRC=models/iris_svc/v2 URI=gs://ml-models/iris_svc/v2/ [SIGN_KEY=keys/model-signing.key]
publish: venv ## upload a version directory (or one .onnx file) to the running stack's bucket (signed with SIGN_KEY)
	@test -n "$(SRC)" -a -n "$(URI)" || { echo "usage: make publish SRC=dir|file.onnx URI=gs://bucket/name/version/ [SIGN_KEY=keys/model-signing.key]"; exit 2; }
	STORAGE_EMULATOR_HOST=http://127.0.0.1:$(FAKE_GCS_HOST_PORT) uv run --frozen python -m model_tools.publish $(SRC) $(URI) $(if $(SIGN_KEY),--sign-key $(SIGN_KEY))

# The signing key pair: keys/ is git-ignored and never copied into an image.
KEYS_DIR ?= keys
keys: ## an ECDSA P-256 key pair for signing models: $(KEYS_DIR)/model-signing.{key,pub}
	@test ! -e $(KEYS_DIR)/model-signing.key || { echo "$(KEYS_DIR)/model-signing.key exists; remove it to make a new pair"; exit 2; }
	mkdir -p -m 700 $(KEYS_DIR)
	umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $(KEYS_DIR)/model-signing.key
	openssl pkey -in $(KEYS_DIR)/model-signing.key -pubout -out $(KEYS_DIR)/model-signing.pub && chmod 644 $(KEYS_DIR)/model-signing.pub
	@echo "sign:   make publish SRC=... URI=... SIGN_KEY=$(KEYS_DIR)/model-signing.key"
	@echo "verify: MODEL_VERIFY_KEY=$(KEYS_DIR)/model-signing.pub docker compose up -d --wait"

# --- Kubernetes (minikube) ------------------------------------------------------
# k8s/ names the compose images with this tag; k8s-images builds exactly those names
# inside minikube's Docker (tests/k8s checks the two agree).
K8S_IMAGE_TAG := dev
KUBECTL ?= uv run --frozen kubectl
MINIKUBE ?= minikube
OVERLAY ?= minikube
K8S_LOCAL_PORT ?= 8080
.PHONY: k8s-images k8s-up k8s-down k8s-render
k8s-images: ## build model-load/{api,loader,fake-gcs}:dev inside minikube's Docker
	eval "$$($(MINIKUBE) docker-env)" && IMAGE_TAG=$(K8S_IMAGE_TAG) $(COMPOSE) build

k8s-up: venv ## minikube: apply the overlay, wait for the rollout, smoke-test an answer
	$(KUBECTL) apply -k k8s/overlays/minikube
	KUBECTL="$(KUBECTL)" bash k8s/smoke-test.sh $(K8S_LOCAL_PORT)

k8s-down: venv ## minikube: delete everything k8s-up created (the namespace with it)
	$(KUBECTL) delete -k k8s/overlays/minikube --ignore-not-found

k8s-render: venv ## print the rendered manifests of OVERLAY (minikube, gke)
	@$(KUBECTL) kustomize k8s/overlays/$(OVERLAY)

# --- load tests (loadtest/README.md) ------------------------------------------
# make loadtest HOST=http://127.0.0.1:8000 USERS=10 SPAWN_RATE=10 DURATION=30s P99_MS=100 MIN_RPS=20
HOST ?= http://127.0.0.1:$(API_HOST_PORT)
USERS ?= 10
SPAWN_RATE ?= 10
DURATION ?= 30s
P99_MS ?= 100
MIN_RPS ?= 20
STEPS ?= 4,16,32,48,64,80,96,128,192
STEP_SECONDS ?= 15
SETTLE_SECONDS ?= 5
API_CONTAINER ?=
LOADTEST_RESULTS ?= results/loadtest
UI_PORT ?= 8089
LOCUST = uv run --frozen locust --host $(HOST)
# locust loads a locustfile by path; the files live in their packages.
LOCUSTFILE = loadtest/src/model_loadtest/locustfile.py
CAPACITY_LOCUSTFILE = bench/src/model_load_bench/capacity.py
RUN_DIR = out=$(LOADTEST_RESULTS)/$$(date -u +%Y%m%dT%H%M%SZ) && mkdir -p $$out

.PHONY: loadtest loadtest-ui
loadtest: venv ## headless locust at HOST; fails on any failure, p99 > P99_MS, < MIN_RPS req/s
	@$(RUN_DIR) && { $(LOCUST) -f $(LOCUSTFILE) --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) --p99-ms $(P99_MS) --min-rps $(MIN_RPS) --csv $$out/stats --html $$out/report.html --only-summary; rc=$$?; echo "report: $$out/report.html (CSV: $$out/stats_*.csv)"; exit $$rc; }

loadtest-ui: venv ## locust's web UI on http://127.0.0.1:8089 (or UI_PORT), aimed at HOST
	$(LOCUST) -f $(LOCUSTFILE) --web-host 127.0.0.1 --web-port $(UI_PORT)

# --- benchmarks (bench/; results in bench/results/) ---------------------------
.PHONY: bench-startup bench-api bench-api-instructions bench-loader bench-onnx bench-proxy loadtest-capacity soak
bench-startup: venv ## cold start: `docker compose up -d` -> API ready, median of RUNS (5)
	uv run --frozen python -m model_load_bench.bench_startup --runs $(or $(RUNS),5)

loadtest-capacity: venv ## step load through STEPS users: chart + verdict (highest step held)
	@$(RUN_DIR) && $(LOCUST) -f $(CAPACITY_LOCUSTFILE) --headless --steps $(STEPS) --step-seconds $(STEP_SECONDS) --settle-seconds $(SETTLE_SECONDS) --api-container '$(API_CONTAINER)' --steps-out $$out/steps.json --csv $$out/stats --html $$out/report.html --only-summary \
	  && uv run --frozen python -m model_load_bench.capacity_report $$out/steps.json --p99-ms $(P99_MS) --out $$out/capacity.png

# make soak SOAK_USERS=134 SOAK_SECONDS=600   (bench/README.md, "make soak")
SOAK_USERS ?= 134
SOAK_SECONDS ?= 600
soak: venv ## 10 min of locust at ~70% capacity on its own stack: errors, p99/min, API RSS -> bench/results/soak.md
	$(COMPOSE) build --quiet
	uv run --frozen python -m model_load_bench.soak --users $(SOAK_USERS) --duration $(SOAK_SECONDS) --report bench/results/soak.md

bench-api: venv ## API req/s, p50, p99 vs a bare ASGI app and raw session.run (needs wrk)
	uv run --frozen python -m model_load_bench.bench_api

bench-api-instructions: venv ## instructions per request, (a) vs /predict, under callgrind (needs wrk, valgrind)
	uv run --frozen python -m model_load_bench.bench_api --instructions

# make bench-models first; BENCH_MODEL= any model.onnx with one FP32 [N, features] input
BENCH_MODEL ?= $(BENCH_MODELS_DIR)/mlp_bench/v1/model.onnx
bench-onnx: venv ## the plain onnxruntime loop on BENCH_MODEL: ms/run, rows/s at batch 1, 16 -> bench/results/onnx_loop.md
	uv run --frozen python -m model_load_bench.bench_onnx $(BENCH_MODEL) --out bench/results/onnx_loop.md

bench-proxy: venv ## the API replicas through the proxy vs directly, in-network and from the host (wrk, root) -> bench/results/proxy.md
	uv run --frozen python -m model_load_bench.bench_proxy --rounds $(or $(RUNS),5)

bench-loader: venv ## 1 GiB from fake-gcs: curl vs plain client vs our loader -> bench/results/loader.md
	uv run --frozen python -m model_load_bench.bench_loader --runs $(or $(RUNS),3) --out bench/results/loader.md

# --- development --------------------------------------------------------------
.PHONY: venv test test-unit test-integration test-e2e test-k8s lint fmt lock audit
venv:
	@uv sync --frozen --quiet

test: venv lint ## everything: lint, unit, integration (real processes), e2e (Compose), k8s
	uv run --frozen pytest $(PYTEST_ARGS)

test-unit: venv ## no network, no Docker
	uv run --frozen pytest tests/unit $(PYTEST_ARGS)

test-integration: venv ## fake-gcs-server binary, loader and API as processes on loopback
	uv run --frozen pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv ## the compose stack in Docker
	uv run --frozen pytest tests/e2e $(PYTEST_ARGS)

test-k8s: venv ## render + validate the manifests, compose parity, the pod under podman
	uv run --frozen pytest tests/k8s $(PYTEST_ARGS)

lint: venv ## ruff, and the per-image lock files match uv.lock
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	@for svc in api loader loadtest; do \
	  $(EXPORT) | cmp -s - $$svc/requirements.lock \
	    || { echo "$$svc/requirements.lock is stale: run make lock"; exit 1; }; \
	done

fmt: venv ## format and auto-fix
	uv run --frozen ruff format .
	uv run --frozen ruff check --fix .

# Not in `make test`: it needs PyPI's JSON API and OSV (osv.dev), which some networks
# (this project's CI machines among them) do not reach; --strict fails on any dependency
# it could not audit, so a blocked network is a failure, never a silent pass.
audit: venv ## pip-audit each image's hashed requirements.lock (needs PyPI's JSON API)
	@for svc in api loader loadtest; do \
	  echo "pip-audit $$svc/requirements.lock"; \
	  uv run --frozen pip-audit --strict --require-hashes --disable-pip --progress-spinner off \
	    -r $$svc/requirements.lock || exit 1; \
	done

lock: ## re-resolve uv.lock and export each image's hashed requirements
	uv lock
	@for svc in api loader loadtest; do $(EXPORT) > $$svc/requirements.lock; done
