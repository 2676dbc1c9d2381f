# The course's two commands (see README): `make start` and `make test`.
# PYTHON picks the interpreter for the virtual environment (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and on its own so a CPU-only machine can pin a CPU build; keep its version equal to
# requirements-lock.txt's `# installed by TORCH_SPEC:` line (`make lock` writes it; tests check it).
TORCH_SPEC ?= torch==2.13.0
# Everything else comes from the lock: exact versions with hashes, written by `make lock` (see README).
LOCK := requirements-lock.txt
BIN := $(VENV)/bin
# Idle OpenMP threads sleep instead of spinning: as fast on a quiet machine, and it keeps PyTorch from
# stalling when other jobs share a small CPU (measured: a notebook went from 431 s to 79 s under load).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: start test install lock site

install: $(VENV)/.installed

# torch first (with what it needs, e.g. CUDA libraries), then the lock's exact versions, hash-checked and
# without dependency resolution (they replace any other version torch brought), then the course itself from
# this checkout with the lock's build backend; `pip check` proves the set is consistent.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# Refresh the lock from pyproject.toml (keeps today's versions where they still fit; `make lock UPGRADE=1` takes
# the newest in pyproject's ranges), then run `make test`. uv, the resolver, lives in a throwaway venv.
UV_SPEC ?= uv==0.13.9
lock:
	tool=$$(mktemp -d) && $(PYTHON) -m venv $$tool && $$tool/bin/python -m pip install -q "$(UV_SPEC)" && \
	  $$tool/bin/python .ci/lock.py --uv $$tool/bin/uv --torch "$(TORCH_SPEC)" $(if $(UPGRADE),--upgrade); \
	  status=$$?; rm -rf $$tool; exit $$status

# Jupyter refuses to run as root unless told (containers, some cloud machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

# JupyterLab at the repository root (lectures, labs and docs in its file browser), on the start page.
start: install
	$(BIN)/jupyter lab $(ROOT_FLAG) START_HERE.ipynb

# Two test processes (pytest-xdist), each notebook or test file whole in one of them, one thread each:
# on the 2-core CI machine that keeps both cores busy while a notebook waits on its kernel or the grader.
# Notebooks run in the `ci` profile (the budgets and asserted outcomes are set for it) unless
# COURSE_PROFILE says otherwise, e.g. `COURSE_PROFILE=cpu make test`.
TEST_WORKERS ?= 2

test: install
	COURSE_PROFILE=$${COURSE_PROFILE:-ci} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The course website: the lectures with the outputs of the last `make test` (saved in build/executed/), the labs,
# the guides, the benchmark tables and a course_utils reference, in build/site/html (open index.html; offline).
site: install
	$(BIN)/python website/build.py
