#!/usr/bin/env bash
# The mail peer for notifications (docs/notifications.md): aiosmtpd from PyPI, a real SMTP server
# that writes each message it accepts into a Maildir.
#
#   scripts/peers/smtp.sh install
#       venv .peers/venv-smtp with aiosmtpd (pinned below).
#   scripts/peers/smtp.sh path
#       prints the venv's python (tests/common/smtp.rs asks for it).
#   scripts/peers/smtp.sh tls DIR
#       writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key (a CA of its own and a server certificate
#       for IP:127.0.0.1) for scripts/peers/smtpd-tls.py, a server that requires STARTTLS (or
#       TLS from the start) and a login.
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
	apt_install openssl
	venv_pinned "$VENV" 'import aiosmtpd' "${SPEC[@]}"
	log "aiosmtpd $("$VENV/bin/python" -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
}

case ${1:-} in
install) install ;;
path) echo "$VENV/bin/python" ;;
tls) test_tls "${2:?usage: $0 tls DIR}" ;;
*)
	echo "usage: $0 install|path|tls DIR" >&2
	exit 2
	;;
esac
