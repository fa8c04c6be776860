# freshet: the commands people expect. `make demo` and `make test` do their own set-up.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/debug

.PHONY: chaos soak all tools browser build demo test unit integration cluster bench quality delayed fmt lint up down clean

all: build

## tools: install nats-server (and moto, an S3 server) into .tools/ if missing
tools:
	@bash tools/install.sh

## browser: Debian's chromium for the live view's browser test (tests/live_view.rs; needs root to install)
browser:
	@bash tools/install-browser.sh

## build: build every binary (debug; tests and the demo use these)
build:
	$(CARGO) build --workspace --bins

## demo: start a local nats-server, run the bookstore story end to end, stop everything
demo: tools build
	$(BIN)/freshet demo

## test: every test, unit and integration, against real nats-servers the tests start
test: tools browser build
	$(CARGO) test --workspace --no-fail-fast

## unit: tests that need no server
unit:
	$(CARGO) test --workspace --lib --bins

## integration: the tests/ suite only
integration: tools browser build
	$(CARGO) test -p freshet-tests

## cluster: the pipeline on a 3-node JetStream cluster through a node killed mid-replay, a rolling
## restart and a partition (not in `make test` until 50 clean runs in a row; see tests/cluster.rs)
cluster: tools build
	$(CARGO) test -p freshet-tests --test cluster -- --ignored --nocapture

## chaos: the chaos suite at full size, 1,000,000 actions on release builds (with a schema race: a stray example sent while featurize declares its schema), and a replay of 200,000 through server restarts and a lease takeover (make test runs both at 3,000)
chaos: tools
	$(CARGO) build --release --workspace --bins
	FRESHET_CHAOS_ACTIONS=1000000 $(CARGO) test --release -p freshet-tests --test chaos -- --nocapture

## soak: the predictor under steady load through 10,000 version swaps (release build; about 4 minutes)
soak: tools
	$(CARGO) build --release --workspace --bins
	target/release/freshet-bench --suite soak --json target/bench/soak.json

## delayed: delayed-feedback methods (wait for the horizon, fake-negative weighting, fake-negative calibration) beside an oracle on one generated live stream, per 5 minutes of event time (no server; seconds)
delayed:
	$(CARGO) run -p freshet-tests --bin freshet-delayed -- --json target/bench/delayed.json

## quality: freshet's models beside River on public streams (installs River into .tools/river-venv)
quality:
	RUNS=3 bash tools/river/compare.sh

## bench: release build, then every suite beside its floor, measured in one run: the pipeline (featurize → train → predictor reply, freshness, scale curve) beside the JetStream floors and the Python peer, the predictor (and by model size), training, featurize, featurize replicas each held to a CPU quota (1, 2, 4, 8; cgroups, as root), and drift's detectors beside River's (about 35 minutes; installs River and nats-py into .tools/river-venv)
bench: tools
	$(CARGO) build --release --workspace --bins
	target/release/freshet-bench --json target/bench/bench.json

fmt:
	$(CARGO) fmt --all

## lint: formatting and clippy, warnings denied
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## up / down: a local stack in the background (nats-server on 4222, file:// artifacts in .freshet/; a function that exits is started again)
up: tools build
	@bash tools/stack.sh up

down:
	@bash tools/stack.sh down

clean:
	$(CARGO) clean
	rm -rf .freshet
