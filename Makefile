# SceneRec: `make demo` runs the live demo, `make test` runs every test (real services too).
# Both install what they need first. Installs are cached outside the clone:
#   - Python packages: a virtualenv under ~/.cache/scenerec keyed by the two locks,
#     requirements.lock (what the code needs to run) and requirements-dev.lock (tests, lint)
#     (pip's own cache keeps the wheels, so even a new venv downloads nothing twice);
#   - Kafka's jars: Maven's local repository (~/.m2) plus var/kafka/libs;
#   - for the tests, Debian's chromium (the browser test) and prometheus (with promtool).

SHELL := /bin/bash
PYTHON ?= python3
LOCK_HASH := $(shell cat requirements.lock requirements-dev.lock | sha256sum | cut -c1-16)
VENV ?= $(HOME)/.cache/scenerec/venv-$(LOCK_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.scenerec-installed
DEMO_ARGS ?=
EVAL_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install kafka system-tools demo test unit eval eval-sets bench lint lock down clean

$(STAMP): requirements.lock requirements-dev.lock
	@echo ">> creating $(VENV) from requirements.lock + requirements-dev.lock (cached for later runs)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock -r requirements-dev.lock
	touch $(STAMP)

# The venv holds the dependencies only; the code runs from this checkout, so several clones
# can share one cached venv.
export PYTHONPATH := $(CURDIR)

install: $(STAMP)
	@echo ">> python environment ready: $(VENV)"

kafka: install
	$(BIN)/python -m deploy.kafka_local install

# Debian packages the tests run: Chromium (Playwright drives it; nothing is downloaded at
# run time) and Prometheus with promtool. apt-get runs only when one is missing (as root, or
# through sudo), and refreshes its lists only if the first try fails.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
APT_INSTALL := $(APT_GET) install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600
system-tools:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  $(APT_INSTALL) $$missing || { $(APT_GET) update -q && $(APT_INSTALL) $$missing; }; \
	fi

demo: install kafka
	$(BIN)/python -m scenerec.cli demo $(DEMO_ARGS)

test: install kafka system-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Offline quality harness (protocols A, B, C of ../shared/EVALUATION.md) -> results/eval.json
eval: install
	$(BIN)/python -m evaluation.cli $(EVAL_ARGS)

# Every data set of ../shared/data as atomic files (results/atomic/NAME), each evaluated in
# its protocol -> results/NAME.json. EVAL_SETS picks a subset, e.g. EVAL_SETS="amazon-beauty".
DATA := $(CURDIR)/../shared/data
ATOMIC := results/atomic
CONVERT := $(BIN)/python -m scenerec.cli convert
EVALUATE := $(BIN)/python -m evaluation.cli --no-progress $(EVAL_ARGS)
EVAL_SETS ?= amazon-beauty yelp-s3rec amazon-scientific yelp-core40 amazon-all-beauty-reviews
$(ATOMIC)/amazon-beauty:
	$(CONVERT) s3rec $(DATA)/amazon-beauty/Beauty.txt $@ --attributes $(DATA)/amazon-beauty/Beauty_item2attributes.json
$(ATOMIC)/yelp-s3rec:
	$(CONVERT) s3rec $(DATA)/yelp-s3rec/Yelp.txt $@ --attributes $(DATA)/yelp-s3rec/Yelp_item2attributes.json
$(ATOMIC)/amazon-scientific:
	$(CONVERT) unisrec $(DATA)/amazon-scientific $@
$(ATOMIC)/yelp-core40:
	$(CONVERT) yelp-core40 $(DATA)/yelp-core40 $@
$(ATOMIC)/amazon-all-beauty-reviews:
	$(CONVERT) amazon-reviews $(DATA)/amazon-all-beauty-reviews/All_Beauty_5.json.gz $@
results/amazon-beauty.json results/yelp-s3rec.json: results/%.json: | $(ATOMIC)/%
	$(EVALUATE) --dataset $(ATOMIC)/$* --protocol loo --out $@
results/amazon-scientific.json: | $(ATOMIC)/amazon-scientific
	$(EVALUATE) --dataset $(ATOMIC)/amazon-scientific --protocol loo --out $@
	$(EVALUATE) --dataset $(ATOMIC)/amazon-scientific --protocol loo --cold-items 0.1 --no-sasrec --out results/amazon-scientific-cold.json
results/yelp-core40.json results/amazon-all-beauty-reviews.json: results/%.json: | $(ATOMIC)/%
	$(EVALUATE) --dataset $(ATOMIC)/$* --out $@
eval-sets: install
	@for name in $(EVAL_SETS); do rm -f results/$$name.json; done
	$(MAKE) $(foreach name,$(EVAL_SETS),results/$(name).json)

# Pipeline benchmark on the real stack (own ports and temp dir) -> results/bench.json
bench: install kafka
	$(BIN)/python -m bench.pipeline_bench $(BENCH_ARGS)

unit: install
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

down: install
	$(BIN)/python -m scenerec.cli down

# Re-pin both locks from what pyproject.toml declares, at the versions in the venv (after
# changing pyproject.toml and installing what it added).
lock: install
	$(BIN)/python tools/lock.py

clean:
	rm -rf var results .pytest_cache .mypy_cache .ruff_cache
