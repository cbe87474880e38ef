# dspex developer commands. `make test` bootstraps .venv on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Every install takes its versions from the lock file; `make lock` refreshes it.
LOCK := requirements/lock.txt
EXTRAS := test,embed,postgres,server,otel
export LITELLM_LOCAL_MODEL_COST_MAP := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock test check lint typecheck bench bench-quick wrk demo clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	# torch first, as the lock pins it: the CPU build present on these machines (others pull CUDA).
	$(PY) -m pip install -q -c $(LOCK) torch
	$(PY) -m pip install -q -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

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

demo: $(STAMP)
	$(VENV)/bin/dspex demo

clean:
	rm -rf .dspex .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
