# churnlab: every command a person or CI needs. `make` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# the page template of `dvc plots show/diff` with the Vega libraries inline (.dvc/config)
PLOTS_TEMPLATE := .churnlab/plots/offline.html
UV_VERSION := 0.13.9

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help
.PHONY: help setup test-fast repro report exps baseline ui server server-stop test lab lint format clean distclean lock bench monitor serve bench-serve base-image image-deps image image-run cycle history replay

help: ## print every target with one line of help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) $(PLOTS_TEMPLATE) ## create .venv with the locked dependencies, the package and its Jupyter kernel

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; churnlab needs Python 3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name churnlab --display-name "churnlab (Python 3.11)" >/dev/null
	@if [ -d .git ]; then $(BIN)/pre-commit install >/dev/null && echo "pre-commit hook installed (nbstripout, ruff)"; fi
	touch $(STAMP)

$(PLOTS_TEMPLATE): src/churnlab/report/plots_template.py | $(STAMP)
	$(BIN)/churnlab plots-template

repro: setup ## run the whole pipeline on the configured data (dvc repro)
	$(BIN)/dvc repro
	-$(BIN)/churnlab exps >/dev/null

report: setup ## rebuild the stakeholder report (and what it needs) and print the page to open
	$(BIN)/dvc repro report
	-$(BIN)/churnlab exps >/dev/null
	@echo "open file://$(abspath reports/index.html)"

exps: setup ## compare the DVC experiments with their commit (terminal and reports/experiments.html)
	$(BIN)/churnlab exps

baseline: setup ## make the current model the baseline that reports compare with
	$(BIN)/churnlab baseline
	$(BIN)/dvc repro report

ui: setup ## the MLflow UI over the project's tracking store, on localhost
	$(BIN)/churnlab ui

serve: setup ## the HTTP service: POST /predict with the champion on 127.0.0.1:8000 (params/serve.yaml; docs/serving.md)
	$(BIN)/churnlab serve

server: setup ## start the team MLflow server on a local PostgreSQL (docs/tracking.md: team mode)
	$(BIN)/churnlab server start

server-stop: setup ## stop the team MLflow server and its PostgreSQL
	$(BIN)/churnlab server stop

# Two workers (pytest-xdist), a test file each at a time; the one full pipeline run is shared.
test: setup ## run every test: package, data, notebooks (nbval), model quality, end to end
	$(BIN)/pytest -n 2 --dist loadfile

test-fast: setup ## the inner loop: every test but those that run the whole pipeline
	$(BIN)/pytest -n 2 --dist loadfile -m "not pipeline"

lab: setup ## JupyterLab on the whole project (Run All works in every notebook)
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

lint: setup ## ruff over the package, the tests and the notebooks
	$(BIN)/ruff check src tests notebooks bench
	$(BIN)/ruff format --check src tests

format: setup ## let ruff fix what it can
	$(BIN)/ruff check --fix src tests notebooks bench
	$(BIN)/ruff format src tests bench

bench: setup ## measure the pipeline, experiments and tracking against issue 10's targets (writes bench/RESULTS.md)
	$(BIN)/python bench/run.py

bench-serve: setup ## measure the HTTP service (latency, 1,000-customer requests, vs mlflow models serve, where one request's time goes; writes bench/RESULTS.md)
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/serve_parts.py

lock: ## re-resolve requirements.lock and environment.yml from pyproject.toml
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock
	$(BIN)/python tools/lockfile.py environment.yml requirements.lock
	$(BIN)/python tools/serving_requirements.py

clean: ## remove run state, caches and failed-run leftovers (keeps data, models, the team server, .venv)
	if [ -d .churnlab ]; then find .churnlab -mindepth 1 -maxdepth 1 ! -name server ! -name plots -exec rm -rf {} +; fi
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)

monitor: setup ## judge every month in data/batches against the champion: verdicts and metrics.prom in monitoring/, page reports/monitoring.html
	$(BIN)/churnlab monitor --all

# ---- the service's container image (docs/serving.md: Container) ----
# docker where its daemon answers, else podman (with deploy/containers.conf: runc, ulimits)
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE ?= churnlab:latest
BASE_IMAGE := churnlab-base:bookworm
# which model is baked in: the registry's champion, or `workspace` (models/model.skops)
MODEL ?= champion
IMAGE_MODEL := build/image/model
IMAGE_PORT ?= 8000
# pip in the build verifies PyPI with the host's CA bundle (a TLS-inspecting proxy's CA too)
CA_BUNDLE ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
comma := ,
BUILD_FLAGS = $(if $(filter podman,$(ENGINE)),--format docker) $(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE))
export CONTAINERS_CONF ?= $(CURDIR)/deploy/containers.conf

base-image: ## the Dockerfile's base image from Debian's packages (debootstrap; root, ~3 min)
	ENGINE=$(ENGINE) deploy/base-image.sh $(BASE_IMAGE)

image-deps: setup ## build the image's dependency stage only (CI set-up: no model needed)
	$(BIN)/python tools/serving_requirements.py --check
	$(ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || ENGINE=$(ENGINE) deploy/base-image.sh $(BASE_IMAGE)
	$(ENGINE) build $(BUILD_FLAGS) --target builder -t churnlab-builder:latest .

image: image-deps ## the service's image with the champion baked in (MODEL=workspace: models/model.skops)
	$(BIN)/churnlab export-model $(IMAGE_MODEL) --source $(MODEL)
	$(ENGINE) build $(BUILD_FLAGS) -t $(IMAGE) .
	@$(ENGINE) image inspect $(IMAGE) --format '{{.Size}}' | awk '{printf "$(IMAGE): %.0f MB\n", $$1 / 1e6}'

image-run: ## run the image on 127.0.0.1:8000, read-only (MODEL_DIR=. serves that project's model instead)
	$(ENGINE) run --rm --read-only --tmpfs /tmp -p 127.0.0.1:$(IMAGE_PORT):8000 --name churnlab-serve \
		$(if $(MODEL_DIR),-v $(abspath $(MODEL_DIR))/models:/app/models:ro -v $(abspath $(MODEL_DIR))/metrics:/app/metrics:ro) $(IMAGE)

cycle: setup ## one month of continuous training (MONTH=YYYY-MM): monitor, decide, retrain, promote, record
	@test -n "$(MONTH)" || { echo "error: MONTH: name the month, e.g. make cycle MONTH=2026-03" >&2; exit 2; }
	$(BIN)/churnlab cycle $(MONTH)

history: setup ## the cycle's decision log as a table (monitoring/decisions.jsonl)
	$(BIN)/churnlab history

replay: setup ## twelve simulated months through the real cycle in a scratch copy: reports/replay.html, the acceptance figures into bench/RESULTS.md
	$(BIN)/churnlab replay --results bench/RESULTS.md
