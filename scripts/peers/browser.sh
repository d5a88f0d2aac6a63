#!/usr/bin/env bash
# Test peers for the web console: Debian's Chromium and Playwright's driver library
# (playwright-core, pinned in e2e/package-lock.json; it drives the system Chromium, no
# browser download). Idempotent.
set -euo pipefail
log() { printf '[peers/browser] %s\n' "$*" >&2; }
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
cd "$(dirname "$0")/../.."

apt_install chromium fonts-dejavu-core
command -v node >/dev/null || { log "node is required (it comes with the machine)"; exit 1; }
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)
log "$(chromium --version 2>/dev/null | head -1); playwright-core $(node -p 'require("./e2e/node_modules/playwright-core/package.json").version')"
