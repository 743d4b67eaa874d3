# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test fuzz bench bench-peers clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,postgresql,s3]'
	touch $(STAMP)

# The logging server in the background, the proxy in the foreground; Ctrl-C stops both.
run: install
	@trap 'kill $$logserver 2>/dev/null; wait $$logserver 2>/dev/null' EXIT INT TERM; \
	$(BIN)/orlogserver --log-dir logs --config config.yaml & logserver=$$!; \
	$(BIN)/orproxy --config config.yaml

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The property tests of the parsers, with 20,000 inputs each instead of 300 (a few minutes).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The same with the peer proxies claude-tap and mitmdump beside the others, pip-installed
# into a venv of their own (bench/.peers-venv), e.g. BENCH_ARGS='--only latency'.
bench-peers: install
	$(BIN)/python bench/run.py --install-peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bench/.peers-venv build *.egg-info .pytest_cache
