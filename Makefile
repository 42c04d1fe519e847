# The two commands of the README: `make run` (the main job) and `make test`. Both set up everything.
PYTHON ?= python3
PIP_FLAGS ?= -q

.PHONY: install run test unit lint bench stop chaos cluster-test

install:
	@command -v java >/dev/null || { echo "installing Java 17 (needed by the Kafka broker)"; apt-get update -q && apt-get install -y -q openjdk-17-jre-headless; }
	@command -v mvn >/dev/null || { echo "installing Maven (fetches Kafka's jars)"; apt-get update -q && apt-get install -y -q maven; }
	@test -x /usr/bin/chromium || { echo "installing Chromium (the dashboard's browser test)"; apt-get update -q && apt-get install -y -q chromium; }
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

run: install
	carnival stack up
	carnival demo

# The chaos suite gets a stack of its own: its simulated fleet is the demo test's (same seed and window),
# and on a shared stack each run's report would see the other's tasks and incidents.
test: install lint
	$(PYTHON) -m pytest -ra --durations=25 --ignore=tests/chaos
	$(PYTHON) -m pytest -ra tests/chaos

unit: install
	$(PYTHON) -m pytest -ra tests/unit

# The chaos suite at the issue's numbers (10 SIGKILLs per worker, ClickHouse down 60 s, ...): about
# 10 minutes. `make test` runs it in its short form (CARNIVAL_CHAOS_SCALE=short, the default).
chaos: install
	CARNIVAL_CHAOS_SCALE=full $(PYTHON) -m pytest -ra -s tests/chaos

# A 3-broker cluster losing a broker under acks=all writes, and the main job on a secured stack (with
# the refusals): the tests marked `cluster`, about 8 minutes, skipped by `make test` to keep it in CI's time.
cluster-test: install
	CARNIVAL_CLUSTER_TESTS=1 $(PYTHON) -m pytest -ra -m cluster tests/integration

lint:
	lint-imports
	ruff check .
	mypy core carnival streams sinks processors schemas simulator

stop:
	carnival stack down
