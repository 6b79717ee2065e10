# han-pipeline: every target sets up .venv by itself when it is missing or older than requirements.txt.
# CONFIG=configs/X.yaml selects a config; SET="key.path=value other.key=value" overrides values.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
CONFIG ?= configs/default.yaml
SET ?=
PORT ?= 5000
TEST_WORKERS ?= 2
DATASETS ?= bbc,imdb
GRID ?=
SEEDS ?=
SET_ARGS := $(foreach s,$(SET),--set $(s))
STAGE_ARGS = --config $(CONFIG) $(SET_ARGS)

export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install data reuters config pipeline run preprocess train evaluate promote explain predict serve sweep dag-test test test-slow bench bench-quick bench-memory bench-inference-memory bench-groups bench-padding bench-inference-split bench-training-split bench-packing lint ui clean

help: ## list the targets
	@echo "usage: make TARGET [CONFIG=configs/X.yaml] [SET='key.path=value ...']"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

install: $(STAMP) ## create or refresh .venv from requirements.txt (every target does this first)

data: $(STAMP) ## fetch BBC and IMDB into data/ (HAN_DATA_DIR), checking sha256 (DATASETS=bbc to pick, FORCE=1 to replace)
	$(PY) -m pipeline.data.fetch --datasets $(DATASETS) $(if $(FORCE),--force)

reuters: $(STAMP) ## convert Reuters-21578's SGML (HAN_DATA_DIR/reuters21578) to the ModApte JSONL configs/reuters.yaml reads (SOURCE=, OUT=)
	$(PY) -m pipeline.data.reuters $(if $(SOURCE),--source "$(SOURCE)") $(if $(OUT),--out "$(OUT)")

config: $(STAMP) ## inspect DATA=path (csv, jsonl, parquet, class folders, archive) and write configs/NAME.yaml for it (FORCE=1)
	@test -n "$(DATA)" || { echo "usage: make config DATA=path/to/data.csv [NAME=name] [FORCE=1]  (docs/own-data.md)"; exit 2; }
	$(PY) -m pipeline init-config "$(DATA)" $(if $(NAME),--name "$(NAME)") $(if $(FORCE),--force)

pipeline: $(STAMP) ## the main job: preprocess -> train -> evaluate -> promote -> explain on CONFIG (default: demo corpus)
	$(PY) -m pipeline run $(STAGE_ARGS)

run: pipeline ## same as pipeline

preprocess: $(STAMP) ## read, quarantine, split, tokenize and encode the corpus of CONFIG
	$(PY) -m pipeline preprocess $(STAGE_ARGS)

train: $(STAMP) ## train the HAN on CONFIG's preprocessed corpus
	$(PY) -m pipeline train $(STAGE_ARGS)

evaluate: $(STAMP) ## evaluate the trained model on the test split, with a baseline and the gate
	$(PY) -m pipeline evaluate $(STAGE_ARGS)

promote: $(STAMP) ## make the evaluated model the challenger, and the champion when its gate passed
	$(PY) -m pipeline promote $(STAGE_ARGS)

explain: $(STAMP) ## write attention explanations, the HTML report and faithfulness metrics
	$(PY) -m pipeline explain $(STAGE_ARGS)

predict: $(STAMP) ## classify TEXT="..." with the trained model of CONFIG
	$(PY) -m pipeline predict $(STAGE_ARGS) --explain "$(TEXT)"

serve: $(STAMP) ## serve the champion of CONFIG (models:/han-<name>@champion) over REST on 127.0.0.1 (SET="serve.port=8080")
	$(PY) -m pipeline serve $(STAGE_ARGS)

sweep: $(STAMP) ## train every combination of GRID="train.learning_rate=0.001,0.002 model.dropout=0.1,0.3" (SEEDS=42,1), ranked on validation
	$(PY) -m pipeline sweep $(STAGE_ARGS) $(foreach g,$(GRID),--grid $(g)) $(if $(SEEDS),--seeds $(SEEDS))

dag-test: $(STAMP) ## run the Airflow retraining DAG once (airflow dags test, temporary AIRFLOW_HOME)
	$(PY) -m pipeline.dagtest $(STAGE_ARGS)

test: $(STAMP) ## run the test suite (what CI runs; TEST_WORKERS=2 processes, 0 = one)
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS)

test-slow: $(STAMP) ## run the heavy real-data tests (marked slow)
	$(PY) -m pytest -q -m slow

bench: $(STAMP) ## HAN vs reference HAN vs TF-IDF+LR on BBC and IMDB over seeds 42,1,2 (SEEDS=...), then preprocessing speed (DATASETS=bbc to pick)
	HAN_DATA_DIR=$${HAN_DATA_DIR:-../shared/data} $(PY) -m benchmarks.compare --datasets $(DATASETS) $(if $(SEEDS),--seeds $(SEEDS))
	HAN_DATA_DIR=$${HAN_DATA_DIR:-../shared/data} $(PY) -m benchmarks.preprocess_speed

bench-quick: $(STAMP) ## the same comparison on 30 documents per class, 2 epochs, seeds 42,1: a smoke run (minutes)
	HAN_DATA_DIR=$${HAN_DATA_DIR:-../shared/data} $(PY) -m benchmarks.compare --quick --datasets $(DATASETS) $(if $(SEEDS),--seeds $(SEEDS))

bench-memory: $(STAMP) ## peak RSS of preprocess, the training stream and training at 25k and 100k IMDB documents
	HAN_DATA_DIR=$${HAN_DATA_DIR:-../shared/data} $(PY) -m benchmarks.memory $(if $(QUICK),--quick)

bench-inference-memory: $(STAMP) ## peak RSS of a process that only evaluates or only serves the IMDB model (after make bench)
	$(PY) -m benchmarks.inference_memory $(if $(QUICK),--quick)

bench-groups: $(STAMP) ## word BiGRU on 4 length groups vs 1, on 100 real IMDB training batches (after make bench)
	$(PY) -m benchmarks.length_groups

bench-padding: $(STAMP) ## the word level's padding in an IMDB training epoch: dense, 4 length groups, packed (after make bench)
	$(PY) -m benchmarks.training_padding

bench-inference-split: $(STAMP) ## where packed IMDB inference spends its time: word level, sentence level, the rest (after make bench)
	$(PY) -m benchmarks.inference_split

bench-packing: $(STAMP) ## packed against whole-model IMDB inference by number of documents: where packing starts to pay (after make bench)
	$(PY) -m benchmarks.packing

bench-training-split: $(STAMP) ## where an IMDB training step spends its time: the word level's calls, steps and cells, the rest (after make bench)
	$(PY) -m benchmarks.training_split

lint: $(STAMP) ## ruff over the package, DAGs, tests and benchmarks
	$(PY) -m ruff check pipeline dags tests benchmarks

ui: $(STAMP) ## the MLflow UI on 127.0.0.1 (PORT=5000) over the same tracking store
	@uri=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}; \
	echo "MLflow UI: http://127.0.0.1:$(PORT)  (store: $$uri)"; \
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) --backend-store-uri "$$uri" --workers 1

clean: ## remove artifacts, the local MLflow store and caches (keeps .venv)
	rm -rf artifacts mlflow.db mlartifacts mlruns .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
