# Two entry points for a fresh machine: `make demo` (set up + run the pipeline on the embedded
# default data) and `make test` (set up + run the test suite). Everything else is a helper.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export PREFECT_HOME ?= $(CURDIR)/.prefect
export SUBSAMPLE_HOME ?= $(CURDIR)/artifacts

.PHONY: setup demo test test-slow server worker deploy mlflow-ui clean

$(BIN)/subsample: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/subsample

setup: $(BIN)/subsample

demo: setup
	$(BIN)/subsample demo

# `make test`: the fast tier (tests not marked slow); `make test-slow`: the end-to-end tests marked
# slow (servers, flows, comparisons, multi-process training, real kills); .ci/run runs both.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Prefect: `make server` (a local server, UI and API on PREFECT_PORT, and a process worker; Ctrl-C
# stops both), then in another shell `source ./activate`, `make deploy` and `prefect deployment run
# train-subsample/demo`. `make deploy` registers the 11 deployments of prefect.yaml: train-subsample/
# demo, celeba, celeba-8gpu (pool subsample-gpu8), cifar10, anime-faces, mnist and
# compare-strategies/compare-demo, compare-cifar10, compare-cifar10-factorial, compare-celeba,
# compare-anime-faces. It creates
# the work pools subsample-process and subsample-gpu8 if they are missing, and talks to
# PREFECT_API_URL when that is set, else to http://127.0.0.1:$(PREFECT_PORT)/api; with no server
# answering there, `make deploy` and `make worker` stop with one line naming the URL.
PREFECT_PORT ?= 4200
PREFECT_API  := $(if $(PREFECT_API_URL),$(PREFECT_API_URL),http://127.0.0.1:$(PREFECT_PORT)/api)
# (one line: make's own "Makefile:N: *** ... Stop." around the check's message, no traceback)
CHECK_SERVER  = $(eval NO_SERVER := $(shell $(BIN)/python -m flows.local_server --check $(PREFECT_API) --command "make $@" 2>&1))$(if $(NO_SERVER),$(error $(NO_SERVER)))

server: setup
	$(BIN)/python -m flows.local_server --port $(PREFECT_PORT)

worker: setup
	$(CHECK_SERVER)
	SUBSAMPLE_REPO=$(CURDIR) PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect worker start --pool subsample-process --type process

deploy: setup
	$(CHECK_SERVER)
	for pool in subsample-process subsample-gpu8; do \
	  PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect work-pool inspect $$pool >/dev/null 2>&1 \
	    || PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect work-pool create $$pool --type process; done
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect --no-prompt deploy --all

# MLflow UI on MLFLOW_PORT; first prints each experiment's runs-table link and each comparison's
# link (model-training mode, the strategy, B, seed and metric columns). Without the job runner
# (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: its consumer processes, ~280 MB each, serve GenAI jobs
# this project never queues).
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	$(BIN)/python -m storage.tracking http://127.0.0.1:$(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(SUBSAMPLE_HOME)/mlflow.db --port $(MLFLOW_PORT)

clean:
	rm -rf artifacts .prefect
