# The two commands: `make demo` runs the pipeline, `make test` runs the tests. Both install first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.installed-test-$(shell cat requirements.txt pyproject.toml requirements-test.txt | cksum | cut -d' ' -f1)

.PHONY: install install-test system-deps runtime-deps demo test test-fast ui tensorboard executor-env reproduce clean
install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	# the project itself (package tfospipe), editable, built with the pinned setuptools
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
	rm -f $(VENV)/.installed-[0-9]*
	touch $(STAMP)

install-test: $(TEST_STAMP) system-deps

$(TEST_STAMP): $(STAMP) requirements-test.txt pyproject.toml
	$(VENV)/bin/pip install -r requirements-test.txt
	$(VENV)/bin/pip check
	rm -f $(VENV)/.installed-test-*
	touch $(TEST_STAMP)

system-deps:
	bash scripts/system_deps.sh test

runtime-deps:
	bash scripts/system_deps.sh runtime

demo: install runtime-deps
	bash scripts/demo.sh

test: install-test
	bash scripts/test.sh

# The edit loop (~2 min): unit, DAG-integrity and parser tests; no Spark application, no Airflow services.
test-fast: install-test
	TFOS_TEST_CDS=0 bash scripts/test.sh -m "not spark and not e2e"

# build/executor-env.tar.gz: the executors' Python (requirements-executor.txt, no Airflow) packed with
# venv-pack, for TFOS_EXECUTOR_PYTHON_ENV=archive (spark.archives). Rebuilt only when its inputs change.
executor-env: install
	bash scripts/executor_env.sh

# The Airflow UI (airflow standalone) on http://127.0.0.1:8080, user admin (password: the last line it prints),
# and TensorBoard on http://127.0.0.1:6006, started and stopped with it
ui: install runtime-deps
	bash scripts/ui.sh

# TensorBoard over every training run's event logs: http://127.0.0.1:6006
tensorboard: install
	$(VENV)/bin/tensorboard --logdir "$${AIRFLOW_VAR_TFOS_DATA_ROOT:-data}/models" --host 127.0.0.1 --port 6006

# Train a promoted model again from its training manifest and compare it with the original, bit for bit
# (scripts/reproduce.py): `make reproduce MODEL=<model_version>` (`python scripts/serving.py list` names them).
reproduce: install
	@test -n "$(MODEL)" || { echo "usage: make reproduce MODEL=<model_version>" >&2; exit 2; }
	bash -c 'source scripts/env.sh && exec python scripts/reproduce.py "$$0"' "$(MODEL)"

clean:
	rm -rf .airflow data build artifacts .spark-standalone
