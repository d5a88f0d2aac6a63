#!/usr/bin/env bash
# Test peer for the virt module: libvirt's library and development files (the module links
# them; opslet is then built with `--features virt`). The tests use libvirt's built-in test
# driver (test:///default), which runs inside the test process: nothing to start or stop.
set -euo pipefail
log() { printf '[peers/virt] %s\n' "$*" >&2; }
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_install libvirt-dev libvirt-daemon libvirt-clients pkg-config
log "libvirt $(pkg-config --modversion libvirt)"
