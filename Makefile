# driftloop: `make demo` runs the whole loop, `make test` runs the test suite.
# Both create the virtual environment on first use (Python 3.11 and the package registries only).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo bento test test-fast bench-models bench-serving bench-serving-features bench-drift bench-policy bench-gate chaos bench-monitor bench-memory bench-footprint lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "driftloop needs Python 3.11, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's prometheus, postgresql and wrk: the tests run them for real (installed if missing).
system-deps:
	scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/driftloop demo

# The Bento with the registry's champion (settings from DRIFTLOOP_CONFIG); see README "Operate it".
bento: $(STAMP)
	$(BIN)/python deploy/bento.py

test: $(STAMP) system-deps
	$(BIN)/pytest

test-fast: $(STAMP) system-deps
	$(BIN)/pytest -m "not slow"

bench-models: $(STAMP)
	$(BIN)/driftloop bench

# The service against a bare Starlette + onnxruntime app (bench/serving.py); wrk drives the closed-loop levels.
bench-serving: $(STAMP)
	@scripts/system-deps.sh || echo "bench-serving: without wrk the Python generator runs instead"
	$(BIN)/python -m bench.serving --json var/bench-serving.json

# Prediction log + metrics on/off, adaptive batching on/off (a GRU), and 2x overload (bench/serving_features.py).
bench-serving-features: $(STAMP)
	@scripts/system-deps.sh
	$(BIN)/python -m bench.serving_features --json var/bench-serving-features.json

# The prepared drift check against Evidently's DataDriftPreset on 100,000 rows x 20 features (bench/drift.py).
bench-drift: $(STAMP)
	$(BIN)/python -m bench.drift --json var/bench-drift.json

# The retraining policy against never-retrain and retrain-every-4 on five scenarios, in process (bench/policy.py).
bench-policy: $(STAMP)
	$(BIN)/python -m bench.policy --json var/bench-policy.json

# The retrain gate on real models: false promotions between equal models, promotions of better ones,
# margin alone against margin + paired test (bench/gate.py).
bench-gate: $(STAMP)
	$(BIN)/python -m bench.gate --json var/bench-gate.json

# The fault matrix against a running service under load (bench/chaos.py): store outages (SQLite files
# unwritable, locked, moved; PostgreSQL stopped), worker killed, SIGTERM, slow uploads, hostile bodies.
# chattr +i needs root; PostgreSQL comes from system-deps. Prints rows sent, answered, stored, dropped, recovery.
chaos: $(STAMP)
	@scripts/system-deps.sh
	$(BIN)/python -m bench.chaos --json var/chaos.json

# The monitor's cost (bench/monitor.py): rows/s checked at 500- and 5,000-row windows, Evidently workspace on
# and off, on SQLite and PostgreSQL (from system-deps; skipped without it); catch-up on a backlog with a change
# in its newest windows; the monitor's memory over a replay; disk after retention. Figures only, no speed asserted.
bench-monitor: $(STAMP)
	@scripts/system-deps.sh || echo "bench-monitor: without PostgreSQL its runs are skipped"
	$(BIN)/python -m bench.monitor --json var/bench-monitor.json

# A serving worker's resident memory under 64 connections, split by cause (bench/memory.py).
# A worker's imports, build time and memory, and cold start against the bare app and an empty BentoML service.
bench-footprint: $(STAMP)
	$(BIN)/python -m bench.footprint --json var/bench-footprint.json

bench-memory: $(STAMP)
	@scripts/system-deps.sh
	$(BIN)/python -m bench.memory --json var/bench-memory.json

clean:
	rm -rf var .pytest_cache build *.egg-info
