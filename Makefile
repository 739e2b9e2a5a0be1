# eds-network — `make help` lists the targets. Every target works from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
EDS := $(VENV)/bin/eds
# make test's pytest-xdist workers, each with an embedded stack of its own (tests/conftest.py); 0 = in the pytest process itself
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: help install system-deps demo airflow stop status seed night summary test test-fast test-all rehearsal lint format lock \
        check-config expectations schema clean browser-deps bench

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

system-deps: ## PostgreSQL server binaries, if the machine has none (Debian: apt-get)
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL server binaries"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else echo "no PostgreSQL binaries: run 'sudo apt-get install postgresql' (or pip install pgserver)"; exit 1; fi; \
	fi

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v python3.11 >/dev/null || { echo "Python 3.11 is required"; exit 1; }
	@python3.11 -m uv --version >/dev/null 2>&1 || python3.11 -m pip install -q uv
	@[ -x $(PY) ] || python3.11 -m uv venv -q --python python3.11 $(VENV)
	python3.11 -m uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt -r requirements-dev.txt
	python3.11 -m uv pip install -q --python $(PY) --no-deps -e .
	python3.11 -m uv pip check --python $(PY)
	@touch $(STAMP)

install: system-deps $(STAMP) ## venv from the pinned requirements + the project (editable)

demo: install ## start the embedded stack, seed, run a whole network night through Airflow, print the summary
	$(EDS) demo

airflow: install ## the Airflow cluster on the same stack (Edge executor, one worker per trust zone) and its workers
	$(EDS) cluster start
	@echo "Airflow UI: http://localhost:$${EDS_API_PORT:-8080}  user: admin  password: see .eds/secrets/ui_passwords.json"
	@echo "Edge workers (one per zone, each with its own secrets in .eds/zones/<queue>/): UI page Admin > Edge Worker Hosts"

stop: ## stop everything demo/airflow started: Airflow (scheduler, workers, API), S3 endpoint, PostgreSQL
	@[ -x $(EDS) ] && $(EDS) stack stop || true

status: install ## is the embedded stack up?
	$(EDS) stack status

seed: install ## (re)seed the demo hospital sources
	$(EDS) seed

night: install ## run one network night through Airflow
	$(EDS) night

summary: install ## print the summary of the last night
	$(EDS) summary

check-config: install ## validate config/network.yaml
	$(EDS) check-config

browser-deps: ## headless Chromium from the system packages, for the operator-page browser test (Debian: apt-get)
	@if [ ! -x "$${EDS_CHROMIUM:-/usr/bin/chromium}" ]; then \
	  echo "installing Chromium (system package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "no Chromium: run 'sudo apt-get install chromium' (or set EDS_CHROMIUM to a Chromium binary)"; exit 1; fi; \
	fi

test-fast: install ## the fast lane (< 3 min): unit tests + DAG integrity, no data system started (EDS_NO_STACK)
	EDS_NO_STACK=1 $(PY) -m pytest -q tests/unit tests/dags

test: install browser-deps ## the whole test suite (real PostgreSQL, real S3 endpoint, real Airflow runs), on TEST_WORKERS workers
	$(PY) -m pytest -q --durations=40 -m "not slow and not rehearsal" -n $(TEST_WORKERS) --dist loadscope tests

rehearsal: install ## the production rehearsal: TLS S3 (private CA), per-zone Edge workers, a night, a key rotation
	$(PY) -m pytest -q -x -m rehearsal tests/rehearsal

test-all: install browser-deps ## the whole test suite including slow fault-injection tests and the rehearsal
	$(PY) -m pytest -q tests

lint: install ## ruff (with Airflow's AIR rules), ruff format, and the architecture's import contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd include && ../$(VENV)/bin/lint-imports --config ../pyproject.toml

format: install ## apply ruff formatting and fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## benchmarks on generated data -> bench/results.json + BENCHMARKS.md (BENCH_QUICK=1: small, 1 run)
	@# Bytecode first: without it every fresh process (bench children, Airflow tasks) recompiles pandas/Airflow.
	@$(PY) -m compileall -q -j 2 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') include \
	  >/dev/null 2>&1 || true
	$(PY) bench/run.py $(if $(BENCH_QUICK),--quick) $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

lock: ## recompile the pinned requirements from requirements*.in (uv, PyPI)
	python3.11 -m uv pip compile -q requirements.in --python-version 3.11 -o requirements.txt
	python3.11 -m uv pip compile -q requirements-dev.in --python-version 3.11 -o requirements-dev.txt

schema: install ## regenerate the packaged OMOP 5.4 schema from ../shared/reference/ohdsi-dqd-5.4
	$(PY) -m eds_network.core.omop ../shared/reference/ohdsi-dqd-5.4/OMOP_CDMv5.4_Field_Level.csv

expectations: install ## regenerate the GX suites in expectations/ from the OHDSI DQD catalogue
	$(PY) -m eds_network.quality.generate generate --out expectations

clean: stop ## remove the embedded stack's state (.eds/) and the venv
	rm -rf .eds $(VENV)

-include deploy/Makefile.compose
