# distillcache: every target bootstraps .venv itself (make venv), torch first and pinned.
# Override the torch build, e.g. `make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# RECIPE=lcm: the recommended LCM-LoRA recipe (docs/training.md, "The lcm recipe"): a cache of one
# noised point per row on the coloured digits (504 prompts x 16 seeds, 2 teacher passes per row),
# then an lcm LoRA (r 64) trained 500 updates of 16 from it. RECIPE=direct (default): the full cache.
RECIPE ?= direct
ifeq ($(RECIPE),lcm)
CACHE ?= runs/cache_lcm
STUDENT ?= runs/student_lcm
EVAL ?= runs/eval_lcm
CACHE_RUN_ARGS ?= --fields noised,cond --images digits --seeds-per-prompt 16 --noised-points-per-sample 1 \
	--batch-size 64 --threads 1
RECIPE_TRAIN_ARGS := --method lcm --student lora --train-steps 500 --w-min 2 --w-max 6
else ifneq ($(RECIPE),direct)
$(error RECIPE=$(RECIPE): choose direct or lcm)
endif
CACHE ?= runs/cache
CACHE_UNSEEN ?= $(CACHE)_unseen
CACHE_RUN_ARGS ?= --features "down_blocks.*,mid_block,up_blocks.*" --batch-size 64 --threads 1
RECIPE_TRAIN_ARGS ?=
STUDENT ?= runs/student
EVAL ?= runs/eval
CACHE_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
BENCH ?=

.PHONY: venv cache train eval test test-slow bench teacher lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Phase one on the embedded teacher: the training store, then the unseen-prompt eval store
# (<cache>_unseen, read by student-train eval). Rerunning resumes and skips committed rows.
cache: $(STAMP)
	$(PY) -m teacher_cache run --out $(CACHE) $(CACHE_RUN_ARGS) $(CACHE_ARGS)
	$(PY) -m teacher_cache run --out $(CACHE_UNSEEN) --prompts teacher_cache/prompts/default_unseen.txt \
		--seeds-per-prompt 2 --fields noise,final_latents,cond,preview --batch-size 64 --threads 1 $(CACHE_ARGS)

train: cache
	$(PY) -m student_train run --cache $(CACHE) --out $(STUDENT) --resume $(RECIPE_TRAIN_ARGS) $(TRAIN_ARGS)

eval: $(STAMP)
	$(PY) -m student_train eval --cache $(CACHE) --student $(STUDENT) --out $(EVAL) $(EVAL_ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) -m bench $(BENCH)

teacher: $(STAMP)
	$(PY) -m teacher_cache.embedded.train_teacher

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache build *.egg-info
