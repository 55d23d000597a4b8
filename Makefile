# Two commands matter on a fresh machine: `make run` (the demo daemon) and `make test` (the whole suite).
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test lint typecheck unit bench stop-primary start-primary slow-primary fast-primary clean

$(VENV)/.runtime: pyproject.toml scripts/bootstrap
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/bootstrap runtime
	@touch $@

$(VENV)/.dev: pyproject.toml scripts/bootstrap
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/bootstrap dev
	@touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	scripts/demo

test: $(VENV)/.dev
	scripts/testbed-install
	PIP=$(BIN)/pip scripts/terraform-install >/dev/null   # Terraform + the null provider, cached outside the repo
	$(BIN)/ruff check hybridops_daemon tests benchmarks simulations
	$(BIN)/mypy --strict hybridops_daemon
	$(BIN)/pytest
	# Every benchmark once, in a quick mode (seconds, figures printed, no threshold), so that none can rot.
	$(BIN)/python -m benchmarks.decision_path --runs 500
	$(BIN)/python -m benchmarks.decide_throughput --samples 20000 --repeat 1
	$(BIN)/python -m benchmarks.mqtt_ingest --messages 5000 --repeat 1
	$(BIN)/python -m benchmarks.peer_link --messages 5000 --repeat 1
	$(BIN)/python -m benchmarks.replay_throughput --repeat 1 --trace simulations/scenarios/slow-degradation.jsonl --profile simulations/profiles/prod.yaml
	$(BIN)/python -m benchmarks.history_export --quick
	$(BIN)/python -m benchmarks.backtest --quick
	$(BIN)/python -m benchmarks.status_load --clients 50 --rounds 1
	$(BIN)/python -m benchmarks.web_view --records 5000 --requests 20
	$(BIN)/python -m benchmarks.web_view_load --records 5000 --blocks 2 --runs 100
	$(BIN)/python -m benchmarks.preflight --quick
	# Issue #7's takeover figures, etcd plaintext beside mutual TLS, printed into the log; it fails if any takeover
	# applied an effect twice.
	$(BIN)/python -m benchmarks.takeover --runs 10

lint: $(VENV)/.dev
	$(BIN)/ruff check hybridops_daemon tests benchmarks simulations

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict hybridops_daemon

unit: $(VENV)/.dev
	$(BIN)/pytest tests/unit

bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.decision_path
	$(BIN)/python -m benchmarks.decide_throughput
	$(BIN)/python -m benchmarks.mqtt_ingest
	$(BIN)/python -m benchmarks.peer_link
	$(BIN)/python -m benchmarks.replay_throughput
	$(BIN)/python -m benchmarks.history_export
	$(BIN)/python -m benchmarks.backtest
	$(BIN)/python -m benchmarks.status_load
	$(BIN)/python -m benchmarks.preflight
	$(BIN)/python -m benchmarks.web_view
	$(BIN)/python -m benchmarks.web_view_load
	$(BIN)/python -m benchmarks.takeover

# The walk-through: take the demo primary down (watch the cutover), and bring it back.
stop-primary:
	@kill "$$(cat var/demo/primary.pid)" && echo "demo primary stopped"

start-primary: $(VENV)/.runtime
	@$(BIN)/hyops-daemon demo-primary --port 8081 >var/demo/primary.log 2>&1 & echo $$! >var/demo/primary.pid; echo "demo primary started"

# The burst lane's load: each slow-primary makes the demo primary's /app answer half a second slower; fast-primary undoes it.
slow-primary:
	@kill -USR1 "$$(cat var/demo/primary.pid)" && echo "demo primary's /app slowed by 0.5s (again for more)"

fast-primary:
	@kill -USR2 "$$(cat var/demo/primary.pid)" && echo "demo primary's /app fast again"

clean:
	rm -rf var/demo .pytest_cache .mypy_cache .ruff_cache
