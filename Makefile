# caio-bench: every target installs what it needs (a .venv from the pinned requirements.txt).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export CAIO_HOME := $(CURDIR)/.caio
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

# make demo CONF='{"users": 4, "duration_s": 40}'  overrides any param of caio_load_test.
CONF ?= {}
# the slowest tests of each tier are listed at its end (CI keeps them in its log)
PYTEST_ARGS ?= --durations=25

.PHONY: help setup demo test test-faults test-compat test-scheduler lint lock clean bench bench-loadgen \
  bench-serving airflow airflow-stop

help:
	@echo "make demo   run caio_load_test end to end on this machine (local target)"
	@echo "make test   lint + the test suite"
	@echo "make test-faults   the fault-injection suite (docs/faults.md)"
	@echo "make test-compat   the built wheel on the oldest supported Airflow (.compat/)"
	@echo "make test-scheduler   the DAGs under a real scheduler, REST API and browser (marker scheduler)"
	@echo "make airflow   a local Airflow (UI, scheduler, PostgreSQL) on 127.0.0.1:AIRFLOW_PORT; make airflow-stop"
	@echo "make bench   every benchmark in bench/ one after another, then one summary table"
	@echo "make bench-loadgen   load-generator efficiency and fidelity (bench/README.md; BENCH_ARGS='--seconds 15')"
	@echo "make bench-serving   local serving efficiency against in-process predictions (BENCH_ARGS)"
	@echo "make lint (ruff + mypy) | lock | clean"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

$(AIRFLOW_HOME)/airflow.db: $(STAMP)
	@mkdir -p $(AIRFLOW_HOME) $(CAIO_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/db-migrate.log; exit 1)

# One benchmark at a time on this machine: the tasks that load it wait in this pool.
HOST_POOL := caio_host
$(AIRFLOW_HOME)/.pool-$(HOST_POOL): $(AIRFLOW_HOME)/airflow.db
	$(BIN)/airflow pools set $(HOST_POOL) 1 "caio-bench: tasks that load this machine, one at a time" > /dev/null
	@touch $@

setup: $(STAMP) $(AIRFLOW_HOME)/airflow.db $(AIRFLOW_HOME)/.pool-$(HOST_POOL)

demo: setup
	@mkdir -p $(CAIO_HOME)/logs
	@echo "Running caio_load_test (log: .caio/logs/demo.log) ..."
	@set -o pipefail; $(BIN)/airflow dags test caio_load_test --conf '$(CONF)' 2>&1 \
	  | tee $(CAIO_HOME)/logs/demo.log | $(BIN)/python -m caio_operators.cli progress
	$(BIN)/python -m caio_operators.cli summary --warehouse "duckdb://$(CAIO_HOME)/warehouse.duckdb"

test: setup lint
	$(BIN)/python -m pytest -m "not faults and not scheduler" $(PYTEST_ARGS)

# Kills, full disks, races and abuse against real processes (tests/faults, marker faults).
test-faults: setup
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

# The built wheel, not the checkout, with the oldest Airflow and providers pyproject.toml
# allows, in .compat/: the unit tests and one airflow dags test (.ci/test-compat).
test-compat: $(STAMP)
	.ci/test-compat

# A real deployment per session in a temp home (tests/scheduler, marker scheduler); headless
# Chromium for the Trigger form test (.ci/run installs Debian's chromium when missing).
test-scheduler: $(STAMP)
	$(BIN)/python -m pytest -m scheduler $(PYTEST_ARGS)

# The local deployment (docs/scheduling.md: A local Airflow): api-server + UI, scheduler (LocalExecutor),
# dag-processor, triggerer on PostgreSQL from the PostgreSQL wheel; its own home, so the
# SQLite home of make demo stays as it is.
AIRFLOW_PORT ?= 8080
AIRFLOW_DB_PORT ?= 5433
DEPLOY_ARGS = --home $(AIRFLOW_HOME)/deploy --dags-folder $(CURDIR)/dags --caio-home $(CAIO_HOME) \
  --api-port $(AIRFLOW_PORT) --db-port $(AIRFLOW_DB_PORT) \
  --port-hint 'make airflow AIRFLOW_PORT=<port> AIRFLOW_DB_PORT=<port>'
airflow: $(STAMP)
	@mkdir -p $(CAIO_HOME)
	@$(BIN)/python -m caio_operators.localairflow start $(DEPLOY_ARGS)

airflow-stop: $(STAMP)
	@$(BIN)/python -m caio_operators.localairflow stop $(DEPLOY_ARGS)

# Uses nginx and wrk when they are on PATH (apt-get install -y nginx wrk); installs neither.
BENCH_ARGS ?=
bench-loadgen: $(STAMP)
	$(BIN)/python bench/loadgen.py $(BENCH_ARGS)

# The local model server against the same model called in-process (bench/README.md).
bench-serving: $(STAMP)
	$(BIN)/python bench/serving.py $(BENCH_ARGS)

# loadgen, serving, harvest, pipeline; figures in bench/results/*.json.
# BENCH_ONLY=harvest,pipeline runs a subset; the table alone: bench/run_all.py --summary-only
BENCH_ONLY ?=
bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

# ruff, then mypy on the package and the DAG files (configured in pyproject.toml), then on
# locust/: a separate program (gevent; its modules import each other by top-level name, and
# the folder's name is the library's), so its own run, by module name with locust/ on the
# path, under the same configuration.
LOCUST_MODULES := $(patsubst locust/%.py,-m %,$(wildcard locust/*.py))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	MYPYPATH=locust $(BIN)/mypy $(LOCUST_MODULES)

lock: $(STAMP)
	$(BIN)/uv pip compile --quiet --python-version 3.11 --no-header requirements.in -o requirements.txt

clean:
	rm -rf $(VENV) .airflow .caio .compat .pytest_cache .ruff_cache

	-@test ! -x $(BIN)/python || $(BIN)/python -m caio_operators.localairflow stop $(DEPLOY_ARGS)
	rm -rf $(VENV) .airflow .caio .pytest_cache .ruff_cache
