#!/usr/bin/env bash
# The project's test command (README, CI): builds everything and runs the whole suite, then
# prints one closing line with the totals over all test binaries.
# Tests that need real peers (sshd, Zabbix, ...) start them from scripts/peers/ themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo is required (https://rustup.rs)" >&2
	exit 1
fi

cargo build --locked --all-targets

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {
	for (i = 2; i <= NF; i++) {
		if ($i ~ /^passed;?$/) p += $(i - 1)
		if ($i ~ /^failed;?$/) f += $(i - 1)
	}
}
END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
