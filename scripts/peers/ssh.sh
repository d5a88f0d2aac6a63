#!/usr/bin/env bash
# Test peers for the ssh module: real OpenSSH servers on loopback.
#
#   scripts/peers/ssh.sh install        OpenSSH server + sudo from Debian's packages, the test
#                                       account `opsuser` (password opslet-test-pw) and a sudo rule
#                                       letting it run commands as `nobody` only. Idempotent.
#   scripts/peers/ssh.sh ansible        a venv with ansible-core under .peers/ (for the benchmark
#                                       and the inventory round-trip tests). Idempotent.
#
# The test binaries start and stop the sshd processes themselves (tests/common/sshd.rs): each
# test process gets its own fleet on 127.0.3.x with a free port, killed by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

SSH_USER=${OPSLET_TEST_SSH_USER:-opsuser}
SSH_PASS=${OPSLET_TEST_SSH_PASSWORD:-opslet-test-pw}
PEERS=${OPSLET_PEERS_DIR:-$PWD/.peers}
log() { printf '[peers/ssh] %s\n' "$*" >&2; }

. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

install() {
	apt_install openssh-server openssh-client sudo curl
	as_root mkdir -p /run/sshd
	id "$SSH_USER" >/dev/null 2>&1 || as_root useradd -m -s /bin/bash "$SSH_USER"
	# sshd with UsePAM=no refuses a locked account: give it the test password.
	echo "$SSH_USER:$SSH_PASS" | as_root chpasswd
	echo "$SSH_USER ALL=(nobody) NOPASSWD: ALL" | as_root tee /etc/sudoers.d/opslet-test >/dev/null
	as_root chmod 0440 /etc/sudoers.d/opslet-test
	log "sshd $(/usr/sbin/sshd -V 2>&1 | head -1 || true); user $SSH_USER ready"
}

ansible() {
	mkdir -p "$PEERS"
	if [[ ! -x $PEERS/venv-ansible/bin/ansible ]]; then
		log "installing ansible-core into $PEERS/venv-ansible"
		python3 -m venv "$PEERS/venv-ansible"
		"$PEERS/venv-ansible/bin/pip" install -q 'ansible-core>=2.16,<2.19'
	fi
	"$PEERS/venv-ansible/bin/ansible" --version | sed -n 1p >&2
}

case ${1:-} in
install) install ;;
ansible) ansible ;;
*) echo "usage: $0 install|ansible" >&2; exit 2 ;;
esac
