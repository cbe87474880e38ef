# dspex developer commands. Each target installs what it needs into .venv, from the lock file:
# `make demo` the runtime with the `embed` extra; `make test`, `make check` and `make bench`
# everything (every extra and the test tools).
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
# Every install takes its versions from the lock file; `make lock` refreshes it.
LOCK := requirements/lock.txt
EXTRAS := test,embed,postgres,server,otel,optimize,ray
PIP := $(PY) -m pip install --disable-pip-version-check --progress-bar on -c $(LOCK)
export LITELLM_LOCAL_MODEL_COST_MAP := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-runtime lock test check lint typecheck bench bench-quick wrk demo clean

# The runtime and the `embed` extra (what `dspex demo` needs): about 1 GB, torch's CPU build most.
$(RUNTIME_STAMP): pyproject.toml $(LOCK)
	@echo "==> [1/3] virtual environment in $(VENV)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -q pip
	@echo "==> [2/3] torch, CPU build (the largest download; others pull CUDA)"
	$(PIP) torch
	@echo "==> [3/3] dspex with the embed extra"
	$(PIP) -e '.[embed]'
	touch $@

# Everything else the tests, checks and benchmarks use.
$(STAMP): $(RUNTIME_STAMP)
	@echo "==> test tools and the extras $(EXTRAS)"
	$(PIP) -e '.[$(EXTRAS)]'
	touch $@

install-runtime: $(RUNTIME_STAMP)

install: $(STAMP)

# Resolve pyproject.toml's dependencies afresh (newest allowed versions) in a scratch venv and
# write what got installed to the lock file. Run the suite on the result before committing it.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	mkdir -p requirements
	{ echo "# Locked versions for every dspex install: pip install -c $(LOCK) ..."; \
	  echo "# Made by \`make lock\` (a scratch venv with the extras $(EXTRAS)); do not edit by hand."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .lock-venv

test: $(STAMP)
	$(PY) -m pytest --cov --cov-branch --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy src

check: lint typecheck test

# bench_service drives the servers with wrk (a Python load generator on the same cores would
# measure itself): installed here when missing; without it that benchmark fails, the others run.
bench: $(STAMP) wrk
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  $(PY) $$b || failed="$$failed $$b"; done; \
	  if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

bench-quick: $(STAMP) wrk
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  $(PY) $$b --quick || failed="$$failed $$b"; done; \
	  if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk (apt-get install -y wrk)"; \
	    apt-get install -y -q wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; } \
	      || echo "could not install wrk with apt-get (not root?): benchmarks/bench_service.py will fail; install wrk by hand"; \
	  else \
	    echo "wrk is missing and apt-get is not available: benchmarks/bench_service.py will fail; install wrk (https://github.com/wg/wrk)"; \
	  fi; }

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/dspex demo

clean:
	rm -rf .dspex .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
