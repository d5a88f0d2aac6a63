#!/usr/bin/env bash
# The mail peer for notifications (docs/notifications.md): aiosmtpd from PyPI, a real SMTP server
# that writes each message it accepts into a Maildir.
#
#   scripts/peers/smtp.sh install
#       venv .peers/venv-smtp with aiosmtpd (pinned below).
#   scripts/peers/smtp.sh path
#       prints the venv's python (tests/common/smtp.rs asks for it).
#
# Tests start their own server (`python -m aiosmtpd -n -l 127.0.0.1:PORT -c
# aiosmtpd.handlers.Mailbox MAILDIR`), wait for its port to take connections, read the messages
# from MAILDIR/new/ (each is there before the server answers 250) and stop it by PID.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-smtp
SPEC=(aiosmtpd==1.4.6)
log() { printf '[peers/smtp] %s\n' "$*" >&2; }

. "$HERE/apt.sh"

install() {
	venv_pinned "$VENV" 'import aiosmtpd' "${SPEC[@]}"
	log "aiosmtpd $("$VENV/bin/python" -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
}

case ${1:-} in
install) install ;;
path) echo "$VENV/bin/python" ;;
*)
	echo "usage: $0 install|path" >&2
	exit 2
	;;
esac
