# The README's two commands: `make run` and `make test`. Everything else is a helper of those.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FLASK := $(BIN)/flask --app web
DB_UPGRADE := flock $(VENV).lock $(FLASK) db-upgrade  # the same lock: run and demo never migrate at once

.PHONY: install browser run test proof bench demo check-books clean

# One install at a time: `make run &` and `make demo` started together share the .venv, so the second waits for
# the first (flock) and then finds the stamp up to date.
$(STAMP): setup.cfg pyproject.toml
	@flock $(VENV).lock sh -c '[ $(STAMP) -nt setup.cfg ] && [ $(STAMP) -nt pyproject.toml ] || { \
		{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } && \
		$(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e ".[test]" && touch $(STAMP); }'

install: $(STAMP)

# Headless Chromium for the page tests (tests/test_pages.py): Debian's package, installed once per machine.
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# With DATABASE_URL and REDIS_URL set: the whole process set of the Procfile (web, worker, beat, flower).
# Without: the embedded default (SQLite file, tasks run inline), one process on http://127.0.0.1:8000.
run: install
	$(DB_UPGRADE)
	@mkdir -p instance
	@if [ -n "$$DATABASE_URL" ] && [ -n "$$REDIS_URL" ]; then \
		export PATH="$(abspath $(BIN)):$$PATH"; \
		export PROMETHEUS_MULTIPROC_DIR="$${PROMETHEUS_MULTIPROC_DIR:-$(abspath instance/prometheus)}"; \
		mkdir -p "$$PROMETHEUS_MULTIPROC_DIR" && find "$$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete; \
		echo "full process set (web, worker, beat, flower); metrics in $$PROMETHEUS_MULTIPROC_DIR"; \
		$(FLASK) urls; \
		$(BIN)/honcho start || [ $$? -eq 130 ]; \
	else \
		echo "embedded mode: SQLite at instance/perfmenu.db, no Redis, tasks run inline"; \
		$(FLASK) urls; \
		$(BIN)/gunicorn -c python:web.gunicorn_conf --workers 1 --threads 8 web.wsgi:app || [ $$? -eq 130 ]; \
	fi

# First the fast unit tests of the pure rules (tests/unit: no services, a few seconds, their own time line),
# then the suites on real PostgreSQL and Redis (TEST_DATABASE_URL, TEST_REDIS_URL, TEST_BROKER_URL override the
# defaults in tests/conftest.py) with real Celery worker processes; PYTEST_ARGS go to those.
test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit
	$(BIN)/python -m pytest --ignore=tests/unit --durations=25 $(PYTEST_ARGS)

# A model, a fan with tokens, an admin and the starter menus (seed/menu_templates.json); waits (up to 90 s) for
# `make run` to answer, then prints the curl lines to buy something. Safe to run again (new passwords, nothing
# duplicated).
demo: install
	$(DB_UPGRADE)
	$(FLASK) demo --wait-for-server 90

# Benchmarks (bench/run.py): ceilings and our figures in one run on PostgreSQL database perfmenu_bench and
# Redis databases 13/12 (BENCH_DATABASE_URL, BENCH_REDIS_URL, BENCH_BROKER_URL); prints a table, writes bench/last.json.
bench: install
	$(BIN)/python -c 'import aiohttp' 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run

# The long proofs (pytest marker `slow`): the bank test at 10,000 purchases under >= 24 worker kills, 3 Redis
# restarts, 3 Redis pauses (~10 s), 10 database backend kills, 4 PostgreSQL restarts (2 fast, 2 stopped ~10 s)
# and Lovense failures, on a PostgreSQL cluster and a redis-server of its own; the long fuzz run; the toy timeline
# at full length (5 fans x 10 s buzzes back to back; a toy offline for 2 minutes). Ends with
# the line `purchases: N faults: F anomalies: A`. Sizes: BANK_PURCHASES, BANK_PG_STOPS, ... (tests/test_bank.py).
proof: install
	$(BIN)/python -m pytest -s -m slow tests/test_fuzz.py tests/test_timeline.py tests/test_bank.py $(PYTEST_ARGS)

check-books: install
	$(FLASK) check-books

clean:
	rm -rf $(VENV) instance .pytest_cache
