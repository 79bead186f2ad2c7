# meshcast: `make up` runs everything with the demo stream; `make test` is the one quality gate.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# command -> Debian package: the ffmpeg CLI (independent test client), Chromium (browser
# tests), curl, node/npm (player assets), nats-server (event bus tests, make cluster),
# espeak-ng (speech for the captions test), openssl (its libssl3: WHIP's DTLS for stock
# FFmpeg publishers, origin/dtls_system.py), and the clients of the interoperability
# tests (docs/clients.md): rtmpdump, mpv, streamlink, GStreamer (see GST_PLUGINS).
APT_COMMANDS := ffmpeg:ffmpeg chromium:chromium curl:curl npm:npm nats-server:nats-server \
	espeak-ng:espeak-ng openssl:openssl rtmpdump:rtmpdump mpv:mpv streamlink:streamlink \
	gst-launch-1.0:gstreamer1.0-tools
# GStreamer element -> Debian package: a plugin is found by gst-inspect, not on $PATH.
# rtmp2sink, hlsdemux/hlsdemux2, avenc_aac, x264enc, rtmpsink (librtmp), flvmux, playbin3.
GST_PLUGINS := rtmp2sink:gstreamer1.0-plugins-bad hlsdemux2:gstreamer1.0-plugins-good \
	avenc_aac:gstreamer1.0-libav x264enc:gstreamer1.0-plugins-ugly \
	rtmpsink:gstreamer1.0-plugins-bad flvmux:gstreamer1.0-plugins-good \
	playbin3:gstreamer1.0-plugins-base

.PHONY: up test lint typecheck pytest system-deps gst-plugins npm-dep apt-deps venv player cluster clean

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
	@$(MAKE) --no-print-directory gst-plugins

npm-dep:
	@$(MAKE) --no-print-directory apt-deps APT_COMMANDS="npm:npm"

apt-deps:
	@missing=""; for cp in $(APT_COMMANDS); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

gst-plugins:
	@missing=""; for ep in $(GST_PLUGINS); do gst-inspect-1.0 $${ep%%:*} >/dev/null 2>&1 || missing="$$missing $${ep##*:}"; done; \
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
