# The two set-up commands of the README: `make demo` and `make test`. Both install what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# The registry's torch + torchvision pair: a pip config's local CPU torch wheel has no matching
# torchvision, so pip must not see that config (README.md, "Install details").
PIP := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VENV)/bin/pip
# Every launch option given, so that Accelerate has nothing to guess or warn about; --quiet, so
# that a run that stops with its one error line is not followed by the launcher's traceback (the
# exit status is 1 either way). THREADS: the CPU threads of the one training process (default:
# the CPUs this shell may use).
THREADS ?= $(shell nproc)
# Test workers (pytest-xdist): one per core, at most 4. Most tests wait on a one-thread training
# subprocess, so a second worker keeps the second core busy; each worker takes whole test files
# (--dist loadfile), so a module's shared run or SLURM cluster stays in one worker.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
CPU_LAUNCH := ACCELERATE_USE_CPU=true $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 \
	--mixed_precision no --dynamo_backend no --num_cpu_threads_per_process $(THREADS) --quiet

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

demo: setup
	$(CPU_LAUNCH) pipelines/train_progressive.py $(ARGS)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
