#!/usr/bin/env bash
# Test peers for the netdev module: network-device CLI simulators reached over SSH (PTY shell,
# password auth only, no exec channel), plus netmiko as the reference client.
#
#   scripts/peers/netdev.sh install
#       venv .peers/venv-net: fake-switches 1.5.0, FakeNOS 1.2.1, netmiko 4.8.0 (idempotent).
#   scripts/peers/netdev.sh cisco PORT HOSTNAME
#       execs fake-switches (stateful Cisco IOS CLI, model cisco_generic, or $FAKESWITCH_MODEL)
#       on 127.0.0.1:PORT, user admin / password opslet-sw-pw ($NETDEV_PASSWORD); logging at WARNING, to stderr.
#   scripts/peers/netdev.sh fakenos DIR PORT_BASE
#       writes DIR/inventory.yaml + the plugin files and execs FakeNOS (one process, 4 devices),
#       user admin / password opslet-sw-pw ($NETDEV_PASSWORD), all on 127.0.0.1:
#         PORT_BASE    HUAWEI   Huawei VRP     prompts <HUAWEI> / [HUAWEI]   (netmiko: huawei)
#         PORT_BASE+1  H3C      H3C Comware    prompts <H3C> / [H3C]         (netmiko: hp_comware)
#         PORT_BASE+2  R-IOS    Cisco IOS      prompts R-IOS> / R-IOS#       (netmiko: cisco_ios)
#         PORT_BASE+3  R-JUNOS  Juniper Junos  prompt  R-JUNOS>              (netmiko: juniper_junos)
#       Canned outputs only: configuration commands do not change later output.
#   scripts/peers/netdev.sh netmiko < request.json
#       runs netdev/netmiko_run.py (JSON in, JSON out; see that file).
#
# Both servers run in the foreground (exec), so the PID the caller spawned is the server's PID:
# kill it to stop (SIGTERM ends both at once). They log (WARNING and up) to stderr only.
# Start-up to listening on a quiet machine: fake-switches ~0.35 s, FakeNOS (all 4 ports) ~0.8 s;
# wait with a TCP connect loop (a bare connect/close is harmless to both). A busy port makes
# either exit with status 1.
#
# Gotchas
#   fake-switches: `terminal length 0` and `show version` only work after `enable`; the enable
#     password must be EMPTY (a non-empty one is always "% Access denied": the CLI compares bytes
#     with str); there is no `end` (netmiko: send_config_set([..., "exit"], exit_config_mode=False)
#     then exit_config_mode(exit_config="exit")); no exec channel; fixed built-in RSA host key.
#   FakeNOS: echoes typed-ahead input when several commands are sent at once (wait for the
#     prompt between commands); echo is byte by byte; fixed built-in RSA host key. R-IOS answers
#     unknown commands with "% Invalid input detected at '^' marker.", R-JUNOS with "Unknown
#     command"; R-JUNOS's prompt has no trailing space (real Junos: "user@host> ").
#   HUAWEI / H3C (netdev/vrp_common.py, hooks in netdev/fakenos_run.py): system-view, return,
#     quit (in user view it closes the session), `screen-length 0 temporary`,
#     `screen-length disable`, display current-configuration / version + FakeNOS's canned
#     `display ...` outputs, abbreviations ("dis cur"). Unknown input gives the real error text
#     under a caret line:  Huawei "Error: Unrecognized command found at '^' position."
#                          H3C    " % Unrecognized command found at '^' position."
#     (also Incomplete / Ambiguous). Until paging is disabled, output longer than 24 lines stops
#     at "  ---- More ----" every 24 lines; one key (not echoed): space = next page, Enter = next
#     line, q / Ctrl+C = stop; then the More prompt is erased with ESC[42D + 42 spaces + ESC[42D
#     (H3C: 16). `screen-length N temporary` sets the page length. CR LF counts as one Enter.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-net
# fake-switches 1.5.0 pins Twisted<17, which does not build on Python 3.11: its dependencies are
# installed unpinned-by-it (versions below, verified together), then the package with --no-deps.
# paramiko 4.0.0 is the newest one FakeNOS accepts.
NET_SPEC=('Twisted[conch]==26.10.0' tftpy==0.8.7 netaddr==1.3.0 lxml==6.1.3 fakenos==1.2.1 netmiko==4.8.0 paramiko==4.0.0)
FAKESWITCH_SPEC=fake-switches==1.5.0
log() { printf '[peers/netdev] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
need_venv() { [[ -x $VENV/bin/python && -f $VENV/.opslet-spec ]] || die "venv missing: run $0 install first"; }
port_arg() { [[ $1 =~ ^[0-9]+$ && $1 -ge 1 && $1 -le 65535 ]] || die "bad port: $1"; }

install() {
	local spec="${NET_SPEC[*]} $FAKESWITCH_SPEC"
	if [[ -x $VENV/bin/python && $(cat "$VENV/.opslet-spec" 2>/dev/null) == "$spec" ]] &&
		"$VENV/bin/python" -c 'import fake_switches, fakenos, netmiko' 2>/dev/null; then
		log "venv-net up to date ($VENV)"
		return 0
	fi
	log "installing $spec into $VENV"
	mkdir -p "$(dirname "$VENV")"
	[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q --disable-pip-version-check "${NET_SPEC[@]}"
	"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$FAKESWITCH_SPEC"
	"$VENV/bin/python" -c 'import fake_switches, fakenos, netmiko'
	echo "$spec" >"$VENV/.opslet-spec"
	log "venv-net ready"
}

cisco() {
	[[ $# -eq 2 ]] || die "usage: $0 cisco PORT HOSTNAME"
	port_arg "$1"
	need_venv
	exec "$VENV/bin/python" -B "$HERE/netdev/fakeswitch_run.py" --model "${FAKESWITCH_MODEL:-cisco_generic}" \
		--hostname "$2" --username admin --password "${NETDEV_PASSWORD:-opslet-sw-pw}" --listen-host 127.0.0.1 --listen-port "$1"
}

fakenos() {
	[[ $# -eq 2 ]] || die "usage: $0 fakenos DIR PORT_BASE"
	local dir=$1 p=$2 f
	port_arg "$p"
	port_arg $((p + 3))
	need_venv
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	for f in vrp_common.py huawei_vrp_realprompt.py hp_comware_realprompt.py; do cp "$HERE/netdev/$f" "$dir/$f"; done
	cat >"$dir/inventory.yaml" <<EOF
default:
  username: admin
  password: ${NETDEV_PASSWORD:-opslet-sw-pw}
  server:
    plugin: ParamikoSshServer
    configuration: {address: 127.0.0.1, timeout: 1}
  shell:
    plugin: CMDShell
    configuration: {intro: ""}
hosts:
  HUAWEI:  {port: $p, nos: {plugin: $dir/huawei_vrp_realprompt.py}}
  H3C:     {port: $((p + 1)), nos: {plugin: $dir/hp_comware_realprompt.py}}
  R-IOS:   {port: $((p + 2)), platform: cisco_ios}
  R-JUNOS: {port: $((p + 3)), platform: juniper_junos}
EOF
	exec "$VENV/bin/python" -B "$HERE/netdev/fakenos_run.py" "$dir/inventory.yaml"
}

netmiko() {
	need_venv
	exec "$VENV/bin/python" -B "$HERE/netdev/netmiko_run.py"
}

cmd=${1:-}
shift || true
case $cmd in
install) install "$@" ;;
cisco) cisco "$@" ;;
fakenos) fakenos "$@" ;;
netmiko) netmiko "$@" ;;
*) echo "usage: $0 install | cisco PORT HOSTNAME | fakenos DIR PORT_BASE | netmiko <request.json" >&2; exit 2 ;;
esac
