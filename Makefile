# meshcast: `make up` runs everything with the demo stream; `make test` is the one quality gate.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# command -> Debian package: the ffmpeg CLI (independent test client), Chromium (browser
# tests), curl, node/npm (player assets), nats-server (event bus tests, make cluster).
APT_COMMANDS := ffmpeg:ffmpeg chromium:chromium curl:curl npm:npm nats-server:nats-server

.PHONY: up test lint typecheck pytest system-deps npm-dep apt-deps venv player cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use as independent clients (the ffmpeg CLI); installed only
# when missing and we are root, otherwise we say what to install.
system-deps:
	@$(MAKE) --no-print-directory apt-deps APT_COMMANDS="$(APT_COMMANDS)"

npm-dep:
	@$(MAKE) --no-print-directory apt-deps APT_COMMANDS="npm:npm"

apt-deps:
	@missing=""; for cp in $(APT_COMMANDS); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# Player assets (hls.js, shaka-player) from the npm registry, pinned by package-lock.json.
PLAYER_STAMP := player-demo/node_modules/.installed-stamp
$(PLAYER_STAMP): player-demo/package.json player-demo/package-lock.json | npm-dep
	cd player-demo && npm ci --no-audit --no-fund --ignore-scripts
	touch $(PLAYER_STAMP)

player: $(PLAYER_STAMP)

up: venv player
	$(BIN)/meshcast up --demo --data data

# nats-server + origin (with the demo stream) + 3 edges as separate processes.
cluster: venv player
	@$(MAKE) --no-print-directory apt-deps APT_COMMANDS="nats-server:nats-server curl:curl"
	scripts/cluster.sh data/cluster

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv system-deps player
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis player-demo/node_modules
