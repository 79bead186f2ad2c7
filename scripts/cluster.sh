#!/usr/bin/env bash
# A local multi-process cluster: nats-server (JetStream), one origin, three edges, each its
# own process talking over NATS and HTTP like separate hosts would. Ctrl-C stops them all.
# Usage: scripts/cluster.sh [DATA_DIR]   (run by `make cluster`)
set -euo pipefail
DATA=${1:-data/cluster}
BIN=${BIN:-.venv/bin}
HOST=127.0.0.1
BUS=nats://$HOST:4222
mkdir -p "$DATA"
pids=()
cleanup() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

nats-server -a $HOST -p 4222 -js -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
pids+=($!)
"$BIN/meshcast" origin --data "$DATA" --host $HOST --http-port 8080 --rtmp-port 1935 \
  --bus $BUS --demo >"$DATA/origin.log" 2>&1 &
pids+=($!)
for port in 8081 8082 8083; do
  "$BIN/meshcast" edge --origin http://$HOST:8080 --host $HOST --port $port --bus $BUS \
    --cache-dir "$DATA/edge-$port" >"$DATA/edge-$port.log" 2>&1 &
  pids+=($!)
done
for port in 8080 8081 8082 8083; do
  for _ in $(seq 1 100); do
    curl -fsS "http://$HOST:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
cat <<MSG
meshcast cluster is up (logs in $DATA/*.log)
  NATS        $BUS
  origin      http://$HOST:8080   publish: rtmp://$HOST:1935/live  (key: $BIN/meshcast keys create NAME --data $DATA)
  edges       http://$HOST:8081  http://$HOST:8082  http://$HOST:8083  (ring learned over NATS)
  player      http://$HOST:8081/player/?stream=demo
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
echo "a cluster process exited; stopping the rest (see $DATA/*.log)" >&2
