# distillcache: every target bootstraps .venv itself (make venv), torch first and pinned.
# Override the torch build, e.g. `make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# TEACHER=sd (default): the embedded StableDiffusionPipeline, outputs under runs/;
# TEACHER=sd3: the embedded flow teacher (StableDiffusion3Pipeline, 28 steps), outputs under runs/sd3/.
TEACHER ?= sd
ifeq ($(TEACHER),sd)
RUNS := runs
TEACHER_ARGS :=
CACHE_FEATURES := --features "down_blocks.*,mid_block,up_blocks.*"
else ifeq ($(TEACHER),sd3)
RUNS := runs/sd3
TEACHER_ARGS := --teacher teacher_cache/embedded/flow_teacher --steps 28
CACHE_FEATURES :=
else
$(error TEACHER=$(TEACHER): use sd (the default teacher) or sd3 (the flow teacher))
endif
FAMILY ?= sd
# RECIPE=lcm: the recommended LCM-LoRA recipe (docs/training.md, "The lcm recipe"): a cache of one
# noised point per row on the coloured digits (504 prompts x 16 seeds, 2 teacher passes per row),
# then an lcm LoRA (r 64) trained 500 updates of 16 from it, the store's 24 MiB in memory (measured no
# bigger than the teacher-in-the-loop run: docs/benchmarks.md). RECIPE=direct (default): the full cache.
RECIPE ?= direct
ifeq ($(RECIPE),lcm)
CACHE ?= $(RUNS)/cache_lcm
STUDENT ?= $(RUNS)/student_lcm
EVAL ?= $(RUNS)/eval_lcm
CACHE_RUN_ARGS ?= --fields noised,cond --images digits --seeds-per-prompt 16 --noised-points-per-sample 1 \
	--batch-size 64 --threads 1
RECIPE_TRAIN_ARGS := --method lcm --student lora --train-steps 500 --w-min 2 --w-max 6 --loader memory
else ifneq ($(RECIPE),direct)
$(error RECIPE=$(RECIPE): choose direct or lcm)
endif
RECIPE_TRAIN_ARGS ?=
CACHE ?= $(RUNS)/cache
CACHE_UNSEEN ?= $(CACHE)_unseen
CACHE_RUN_ARGS ?= $(CACHE_FEATURES) --batch-size 64 --threads 1
STUDENT ?= $(RUNS)/student
EVAL ?= $(RUNS)/eval
COMPARE ?= $(RUNS)/compare
CACHE_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
COMPARE_ARGS ?=
BENCH ?=
# The tests run one torch thread per process: pytest-xdist runs one process per core, a test file
# per worker (module fixtures built once). TEST_WORKERS= runs them in this process.
TEST_WORKERS ?= -n auto --dist loadfile

.PHONY: venv cache train eval compare test test-slow mutate bench teacher lint format clean

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
	$(PY) -m teacher_cache run --out $(CACHE) $(TEACHER_ARGS) $(CACHE_RUN_ARGS) $(CACHE_ARGS)
	$(PY) -m teacher_cache run --out $(CACHE_UNSEEN) $(TEACHER_ARGS) --prompts teacher_cache/prompts/default_unseen.txt \
		--seeds-per-prompt 2 --fields noise,final_latents,cond,preview --batch-size 64 --threads 1 $(CACHE_ARGS)

train: cache
	$(PY) -m student_train run --cache $(CACHE) --out $(STUDENT) --resume $(RECIPE_TRAIN_ARGS) $(TRAIN_ARGS)

eval: $(STAMP)
	$(PY) -m student_train eval --cache $(CACHE) --student $(STUDENT) --out $(EVAL) $(EVAL_ARGS)

# Every method's default student from one cache, trained and evaluated side by side (docs/methods.md).
compare: cache
	$(PY) -m student_train compare --cache $(CACHE) --out $(COMPARE) $(COMPARE_ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(TEST_WORKERS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(TEST_WORKERS)

# Mutation testing of the store, schedule, losses, students, export and capture hooks ([tool.mutmut] in
# pyproject.toml). Hours of CPU: not in CI. MUTANTS="shared.schedule*" runs a part.
MUTANTS ?=
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e ".[mutate]"
	$(PY) -m mutmut run --max-children 2 $(MUTANTS)
	$(PY) tools/mutation_summary.py --out runs/mutate

bench: $(STAMP)
	$(PY) -m bench $(BENCH)

# FAMILY=sd (default_teacher) or FAMILY=sd3 (flow_teacher)
teacher: $(STAMP)
	$(PY) -m teacher_cache.embedded.train_teacher --family $(FAMILY)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache build *.egg-info
