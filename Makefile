# Every target works on a fresh machine by itself: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: running the chat needs only its own packages; the test and dev tools
# (pytest, hypothesis, ruff, ...) are installed by the targets that use them.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-stamp

.PHONY: install run client web test test-scale lint redis-server chromium clean fuzz bench bench-10k bench-quick screenshot

$(RUN_STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: the server on 127.0.0.1:9527 with an embedded Redis (ARGS="--redis-url redis://..." for a real one)
run: $(RUN_STAMP)
	$(PY) server.py $(ARGS)

## make web: the server with the browsers' page at http://127.0.0.1:8080/ (ARGS as for run)
web: $(RUN_STAMP)
	$(PY) server.py --ws-port 8080 $(ARGS)

## make client: the chat client (ARGS="--port 9527 --lang zh" ...)
client: $(RUN_STAMP)
	$(PY) client.py $(ARGS)

## make test: the whole suite, on fakeredis and, when redis-server exists, on a real Redis too
test: $(STAMP)
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory redis-server || \
		echo "redis-server could not be installed: the real-Redis tests will be skipped"
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory chromium || \
		echo "chromium could not be installed: the browser tests will be skipped"
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

## chromium: install Debian's chromium, the browser of the browser tests (needs root and apt)
chromium:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	command -v chromium

## make screenshot: docs/screenshot.png and docs/screenshot-phone.png, the page with a few messages
screenshot: $(STAMP)
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory chromium
	@# The Chinese names and texts in the picture need a CJK font.
	@fc-list 2>/dev/null | grep -qi -e zenhei -e "noto.*cjk" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei >/dev/null; } || true
	CHATROOM_SCREENSHOT_DIR=docs $(PY) -m pytest -q tests/test_browser.py -k "screenshots and fake"

## redis-server: install Debian's redis-server (needs root and apt)
redis-server:
	command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	command -v redis-server

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info

## make test-scale: the tests too large for make test (a hundred rooms of ten on two processes, ...),
## with make test's Redis and browser installed first
test-scale: PYTEST_ARGS := -m scale
test-scale: test

## make fuzz: the fuzz tests with many more examples (FUZZ_EXAMPLES=2000 by default)
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q tests/test_fuzz.py

## make bench: fan-out (metrics off and on), fixed load, command round trips, capacity and the stop, on a real Redis and on the
## embedded one; prints a table (about 20 minutes; ARGS="--scenarios fanout --backends real" ...)
bench: $(STAMP)
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory redis-server
	$(PY) bench/run.py $(ARGS)

## make bench-10k: 10,000 users on one process (the capacity scenario, once, up to 180 s to log in); Redis's
## maxclients and every open-file limit must allow 3 sockets a user: README "10,000 users on one process"
bench-10k: $(STAMP)
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory redis-server
	$(PY) bench/run.py --backends real --scenarios capacity --capacity-sizes 10000 --runs 1 --capacity-timeout 180 \
		--redis-maxclients 25000 --server-arg=--max-clients=10000 $(ARGS)

## make bench-quick: one run of smaller scenarios, a smoke test of the benchmark (about 2 minutes)
bench-quick: $(STAMP)
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory redis-server
	$(PY) bench/run.py --quick $(ARGS)
