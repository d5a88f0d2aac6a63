#!/usr/bin/env bash
# Test peer for the virt module: libvirt's library and development files (the module links
# them; opslet is then built with `--features virt`). The tests use libvirt's built-in test
# driver (test:///default), which runs inside the test process: nothing to start or stop.
set -euo pipefail
log() { printf '[peers/virt] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "needs root: $*"; return 1; fi; }
missing=()
for p in libvirt-dev libvirt-daemon libvirt-clients pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
	log "installing ${missing[*]}"
	if ! apt-cache policy "${missing[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		for i in 1 2 3 4 5; do as_root apt-get update -qq && break; sleep 10; done
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "libvirt $(pkg-config --modversion libvirt)"
