# Two commands do everything: `make run` (the pipeline) and `make test` (the tests).
# Each creates or refreshes .venv from pyproject.toml first; nothing is installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PHASE2_STATE_DIR ?= $(CURDIR)/.phase2

.PHONY: venv run test test-all reliability up down status deploy lint lint-recipe format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## make run [DATA=path/to/data.yaml BASELINE=path/to/best.pt RECIPE=phase2-seed]
run: venv
	$(BIN)/phase2 run $(if $(DATA),--data $(DATA)) $(if $(BASELINE),--baseline $(BASELINE)) $(if $(RECIPE),--recipe $(RECIPE))

## the fast suite plus every slow test behind a row of docs/reliability.md (the `reliability` mark is
## set on each test using the reliability_log fixture): what CI runs; `make test-all` adds the rest
TEST_SELECTION ?= not slow or reliability
test: venv
	$(BIN)/python -m pytest -m "$(TEST_SELECTION)" $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## faults, bad inputs, secrets, load (slow tests included); writes docs/reliability.md from the test
## outcomes and fails if a row listed in tests/reliability_rows.yaml is FAIL, error or MISSING
reliability: venv
	PHASE2_WRITE_RELIABILITY_TABLE=1 $(BIN)/python -m pytest -m reliability $(PYTEST_ARGS)

up: venv
	$(BIN)/phase2 up

down: venv
	$(BIN)/phase2 down

status: venv
	$(BIN)/phase2 status

deploy: venv
	$(BIN)/phase2 deploy

## ruff (lint + format check) and mypy over the code; zero findings or it fails (CI runs it first)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## apply ruff's formatting and safe fixes
format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## recipe settings that silently do something else: make lint-recipe RECIPE=phase2-native
lint-recipe: venv
	$(BIN)/phase2 lint $(or $(RECIPE),phase2-seed)

clean: down
	rm -rf $(PHASE2_STATE_DIR)
