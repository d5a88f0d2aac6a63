#!/usr/bin/env bash
# The project's test command (README, CI): builds everything and runs the whole suite.
# Tests that need real peers (sshd, Zabbix, ...) start them from scripts/peers/ themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo is required (https://rustup.rs)" >&2
	exit 1
fi

cargo build --locked --all-targets
cargo test --locked --all-targets
