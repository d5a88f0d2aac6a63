#!/usr/bin/env bash
# Test peers for the web console: Debian's Chromium and Playwright's driver library
# (playwright-core, pinned in e2e/package-lock.json; it drives the system Chromium, no
# browser download). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf '[peers/browser] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "needs root: $*"; return 1; fi; }

if ! dpkg -s chromium >/dev/null 2>&1; then
	log "installing chromium"
	if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		for i in 1 2 3 4 5; do as_root apt-get update -qq && break; sleep 10; done
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
command -v node >/dev/null || { log "node is required (it comes with the machine)"; exit 1; }
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)
log "$(chromium --version 2>/dev/null | head -1); playwright-core $(node -p 'require("./e2e/node_modules/playwright-core/package.json").version')"
