# The course's two commands (see README): `make start` and `make test`.
# PYTHON picks the interpreter for the virtual environment (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and on its own so a CPU-only machine can pin a CPU build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Idle OpenMP threads sleep instead of spinning: as fast on a quiet machine, and it keeps PyTorch from
# stalling when other jobs share a small CPU (measured: a notebook went from 431 s to 79 s under load).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: start test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

# Jupyter refuses to run as root unless told (containers, some cloud machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

start: install
	$(BIN)/jupyter lab $(ROOT_FLAG) lectures/

# Two test processes (pytest-xdist), each notebook or test file whole in one of them, one thread each:
# on the 2-core CI machine that keeps both cores busy while a notebook waits on its kernel or the grader.
# Notebooks run in the `ci` profile (the budgets and asserted outcomes are set for it) unless
# COURSE_PROFILE says otherwise, e.g. `COURSE_PROFILE=cpu make test`.
TEST_WORKERS ?= 2

test: install
	COURSE_PROFILE=$${COURSE_PROFILE:-ci} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
