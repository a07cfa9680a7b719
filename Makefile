# distillcache: every target bootstraps .venv itself (make venv), torch first and pinned.
# Override the torch build, e.g. `make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TEACHER ?= teacher_cache/embedded/default_teacher
CACHE ?= runs/cache
STUDENT ?= runs/student
EVAL ?= runs/eval
CACHE_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
BENCH ?=

.PHONY: venv cache train eval test bench teacher lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Phase one on the embedded teacher; rerunning resumes and skips committed rows.
cache: $(STAMP)
	$(PY) -m teacher_cache run --out $(CACHE) $(CACHE_ARGS)

train: cache
	$(PY) -m student_train run --cache $(CACHE) --out $(STUDENT) $(TRAIN_ARGS)

eval: $(STAMP)
	$(PY) -m student_train eval --cache $(CACHE) --student $(STUDENT) --out $(EVAL) $(EVAL_ARGS)

test: $(STAMP)
	$(PY) -m pytest

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
