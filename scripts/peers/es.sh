#!/usr/bin/env bash
# Test peer for the es module: osmem-server (PyPI), an in-memory emulator of the OpenSearch /
# Elasticsearch REST API (query DSL, aggregations, _bulk, _count, search_after, PIT). No real
# Elasticsearch or OpenSearch is installable from the registries this project can reach.
#
#   scripts/peers/es.sh install   a venv with osmem-server under .peers/ (idempotent)
#   scripts/peers/es.sh start     on 127.0.0.1:$ES_PORT (default 19200), in its own process group
#   scripts/peers/es.sh stop      that process group, by the PID recorded at start
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=${OPSLET_ES_STATE:-/tmp/opslet-es}
ES_PORT=${ES_PORT:-19200}
VENV=$PWD/.peers/venv-es
VERSION=0.1.6
log() { printf '[peers/es] %s\n' "$*" >&2; }
alive() { [ -f "$STATE/es.pid" ] && kill -0 "$(cat "$STATE/es.pid")" 2>/dev/null; }

install() {
	mkdir -p "$STATE" .peers
	if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/pip" show osmem-server 2>/dev/null | grep -q "^Version: $VERSION$"; }; then
		log "installing osmem-server $VERSION"
		python3 -m venv "$VENV"
		"$VENV/bin/pip" install -q --disable-pip-version-check "osmem-server==$VERSION"
	fi
	BIN=$(ls "$VENV"/lib/python3*/site-packages/osmem_server/bin/osmem-server | head -1)
	[ -x "$BIN" ] || { log "osmem-server binary missing"; exit 1; }
}

start() {
	install
	if alive; then log "already running (pid $(cat "$STATE/es.pid"))"; return 0; fi
	setsid "$BIN" -addr "127.0.0.1:$ES_PORT" -no-stdin-watch -no-ja >"$STATE/es.log" 2>&1 </dev/null &
	echo $! >"$STATE/es.pid"
	for _ in $(seq 1 120); do
		curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$ES_PORT/_cluster/health" 2>/dev/null && { log "up on 127.0.0.1:$ES_PORT (pid $(cat "$STATE/es.pid"))"; return 0; }
		sleep 0.25
	done
	cat "$STATE/es.log" >&2
	exit 1
}

stop() {
	alive || { rm -f "$STATE/es.pid"; return 0; }
	local pid; pid=$(cat "$STATE/es.pid")
	kill -TERM -- "-$pid" 2>/dev/null || true
	for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
	kill -KILL -- "-$pid" 2>/dev/null || true
	rm -f "$STATE/es.pid"
	log "stopped (pid $pid)"
}

case ${1:-} in
install) install ;;
start) start ;;
stop) stop ;;
*) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
