# Laneway: every target sets up what it needs (venv, broker) first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv lock browser kafka-up kafka-down run run-cluster worker test test-unit lint format bench bench-throughput bench-mllp bench-isolation bench-dashboard bench-codec bench-outage bench-faults bench-tenants bench-chaos schema clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# Installs exactly the versions in requirements.lock (what CI tested), then Laneway itself.
$(STAMP): pyproject.toml requirements.lock
	@echo "==> creating $(VENV) and installing the locked dependencies and Laneway"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements.lock
	@$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(STAMP) ## Create the virtualenv and install (idempotent)

lock: $(STAMP) ## Re-resolve requirements.lock after a change to pyproject.toml's dependencies (keeps pins that still fit)
	@$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra bench --universal \
		--python-version 3.11 --no-header --annotation-style line --quiet -o requirements.lock

KAFKA_NODES ?= 1
kafka-up: $(STAMP) ## Start the local Kafka 4.x (KRaft) broker (KAFKA_NODES=3: a 3-node cluster) unless LANEWAY_KAFKA_BOOTSTRAP points elsewhere
	@KAFKA_NODES=$(KAFKA_NODES) bash scripts/kafka.sh up

kafka-down: ## Stop the local broker, or with KAFKA_NODES=3 the cluster (data is kept in .run/kafka)
	@KAFKA_NODES=$(KAFKA_NODES) bash scripts/kafka.sh down

run: kafka-up ## Set up everything, start the shared and lane workers, feed demo traffic from 3 tenants
	@bash scripts/run.sh

run-cluster: kafka-up ## As run, with 3 shared workers and 2 lane workers, each its own ports and data dir
	@bash scripts/run.sh --shared 3 --lanes 2

worker: kafka-up ## Run one worker in the foreground
	@$(VENV)/bin/faust -A agents.worker worker -l info

# Debian's Chromium for the dashboard's browser test (Playwright drives it; it never downloads one).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "==> installing Debian's chromium for the browser test"
	@apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

browser: $(CHROMIUM) ## Install Debian's Chromium (needs root or sudo-less apt)

test: kafka-up $(CHROMIUM) ## Set up everything, start Kafka and run the whole test suite
	@$(PY) -m pytest

test-unit: $(STAMP) ## Fast unit tests only (no broker)
	@$(PY) -m pytest tests/unit

lint: $(STAMP) ## ruff check + format check + mypy (strict on streams/)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy --strict streams
	@$(VENV)/bin/mypy agents

format: $(STAMP) ## Apply ruff fixes and formatting
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

bench: bench-codec bench-throughput bench-mllp bench-isolation bench-dashboard bench-outage bench-faults ## Run every benchmark; JSON and PNG in bench/results/

bench-throughput: kafka-up ## End-to-end pipeline vs raw aiokafka pass-through
	@$(PY) -m bench.throughput

bench-mllp: kafka-up ## MLLP ACK latency at 1,000 msg/s over 10 connections (acks=all)
	@$(PY) -m bench.mllp

SHARED_WORKERS ?= 1
bench-isolation: kafka-up ## 19 quiet tenants vs 1 noisy (50x burst), lanes vs naive, same run (SHARED_WORKERS=2: two shared workers each)
	@$(PY) -m bench.isolation --shared-workers $(SHARED_WORKERS)

bench-dashboard: kafka-up $(CHROMIUM) ## Dashboard first render with 1,000 tenants in headless Chromium
	@$(PY) -m bench.dashboard

bench-codec: $(STAMP) ## HL7 fast path vs hl7apy vs python-hl7, same process
	@$(PY) -m bench.codec

bench-outage: kafka-up ## Broker outages under MLLP + HTTP traffic: stop, kill -9, 3-node broker kill
	@$(PY) -m bench.outage

bench-faults: kafka-up ## Fault inputs of every class at ingest beside a quiet tenant: accounting, stalls, p99
	@$(PY) -m bench.faults

# kafka-up for the broker jars only: the bench runs a throwaway broker of its own. Not part of
# `make bench`: ~25 min on 2 cores, and the broker needs an open-files limit above 20,000.
bench-tenants: kafka-up ## 10,000 tenants on one shared worker: RSS per idle tenant, /api/stats, idle CPU, restart
	@$(PY) -m bench.tenants

# kafka-up for the broker jars only: the bench restarts a throwaway broker of its own. Not part of
# `make bench`: 10 minutes of faults, then the drain. `python -m bench.chaos --duration-s 120` for
# a short run, `--seed N` to replay a run's choices.
bench-chaos: kafka-up ## 3 shared + 2 lane workers, 50 tenants, 10 min of kill -9, broker restart, scaling, pins, pauses
	@$(PY) -m bench.chaos

schema: $(STAMP) ## Regenerate docs/*-schema.json from streams/records.py
	@$(PY) scripts/gen_schema.py

clean: ## Remove the venv and runtime state (broker data, worker data, logs)
	@KAFKA_NODES=$(KAFKA_NODES) bash scripts/kafka.sh down || true
	rm -rf $(VENV) .run .pytest_cache .ruff_cache *.egg-info
