# One entry point per chore. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
RUST_SRC := $(shell find core_rs/src -name '*.rs' 2>/dev/null)
PY_META := pyproject.toml Cargo.toml core_rs/Cargo.toml $(wildcard clients/python/pyproject.toml)

.PHONY: help install lint fmt test test-rust test-py bench bench-budget demo results protos postgres soak clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): $(PY_META) $(RUST_SRC) core_rs/Cargo.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	@if [ -f clients/python/pyproject.toml ]; then $(PIP) install --quiet -e clients/python; fi
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install fanout (builds the Rust core) with dev extras

lint: $(STAMP) ## ruff, mypy, stubtest, cargo fmt and clippy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy py_service tests benchmarks $(wildcard clients/python/fanout_client)
	$(PY) -m mypy.stubtest fanout._core
	$(VENV)/bin/buf lint
	$(PY) scripts/gen_protos.py --check
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: $(STAMP) ## apply ruff and cargo formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	cargo fmt --all

postgres: ## install PostgreSQL from Debian's packages when missing
	@bash scripts/ensure-postgres.sh

test-rust: ## cargo test
	cargo test --workspace

test-py: $(STAMP) postgres ## pytest (PostgreSQL tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint test-rust test-py ## lint, then the cargo and pytest suites

bench: $(STAMP) ## benchmarks: a table, then one JSON line of named figures per suite
	$(PY) benchmarks/run.py

bench-budget: $(STAMP) ## how much handler work the service targets leave room for (about 40 s)
	$(PY) benchmarks/budget.py

demo: $(STAMP) ## install, then replay the genome workflow through a live server
	$(PY) -m fanout.demo

results: $(STAMP) ## regenerate docs/results.md and its plots (about 7 minutes)
	$(VENV)/bin/fanout simulate --out docs/results --report docs/results.md

soak: $(STAMP) postgres ## a few minutes of mixed traffic with a database restart; writes docs/reliability.md
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

protos: $(STAMP) ## regenerate the gRPC/protobuf code from proto/
	$(PY) scripts/gen_protos.py

clean: ## remove build output and the virtualenv
	rm -rf target $(VENV) py_service/fanout/_core.*.so .mypy_cache .ruff_cache .pytest_cache .hypothesis
