#!/usr/bin/env bash
# Test peers for the ipmi / redfish modules: OpenIPMI's ipmi_sim (a real IPMI-over-LAN BMC
# simulator, RMCP and RMCP+) and OpenStack's sushy-emulator (Redfish, fake driver).
#
#   scripts/peers/bmc.sh install
#       Debian openipmi + ipmitool; venv .peers/venv-redfish with sushy-tools 2.2.0 + bcrypt.
#   scripts/peers/bmc.sh ipmi-sim DIR PORT [hot]
#       writes DIR/lan.conf, DIR/bmc.emu, DIR/chassis.sh, wipes DIR/state and DIR/chassis-*,
#       then execs ipmi_sim on UDP 127.0.0.1:PORT. Login: user 2 "admin" / "opslet-bmc-pw" ($BMC_PASSWORD), admin
#       privilege (the only enabled user), IPMI 2.0 (lanplus) and 1.5 (lan), auth none/md2/md5/
#       straight. Chassis power starts ON; power on/off/cycle/reset/soft and boot device work
#       (state in DIR/chassis-0x20/{power,boot}, one line per change in DIR/chassis-0x20/events).
#       MC 0x20, IPMI 2.0 (ipmitool mc info: Device ID 35, Manufacturer ID 0x1291 (4753), Product ID 0xf02).
#       Sensors (ipmitool sensor list / sdr list):
#         #1 CPU_Temp  48 degrees C   thresholds UNC 80, UC 90, UNR 100 (no lower thresholds)
#         #2 FAN1      3200 RPM       no thresholds
#         #3 12V       12 Volts       no thresholds
#       SEL (ipmitool sel list), timestamp = ipmi_sim's start-up:
#         1: Temperature #0x01 (CPU_Temp) | Upper Non-critical going high | Asserted (reading 82, threshold 80)
#       With `hot`: CPU_Temp reads 95 (status "cr": above UC 90, below UNR 100) and the SEL has
#         2: Temperature #0x01 (CPU_Temp) | Upper Critical going high | Asserted (reading 95, threshold 90)
#   scripts/peers/bmc.sh redfish DIR PORT [tls]
#       writes DIR/sushy.conf and DIR/htpasswd, wipes DIR/state, then execs sushy-emulator on
#       127.0.0.1:PORT (http; with `tls`: https with a certificate for IP:127.0.0.1 in DIR/tls.crt,
#       key DIR/tls.key, signed by a CA of its own, DIR/ca.crt, which clients trust; TLS 1.2 only). HTTP Basic auth admin / opslet-bmc-pw ($BMC_PASSWORD) (bcrypt
#       htpasswd); /redfish/v1/ itself needs no auth. Two systems, both PowerState Off:
#         node-1  27946b59-9e44-4fa7-8e91-f3527a1ef094  NIC 00:5c:52:31:3a:9c
#         node-2  0f7e8a4c-4a8b-4b7e-9a40-7d0a3f7c2c11  NIC 00:5c:52:31:3a:9d
#
# Both servers run in the foreground (exec): the PID the caller spawned is the server's PID;
# kill it to stop. Startup to ready: ipmi_sim ~0.05 s, sushy-emulator ~0.6 s (more when loaded).
#
# Gotchas
#   ipmi_sim: always use cipher suite 3 (ipmitool -I lanplus -C 3): it lacks "Get Channel Cipher
#     Suites", so without -C each ipmitool call waits ~10 s, and suite 17 fails. It needs -n
#     (without it, it reads a console on stdin and aborts when stdin is /dev/null). Errors after
#     start-up go to syslog only (debug: add -d in the foreground). State persists in -s DIR, so
#     every start wipes it. UDP: "listening" can only be checked with a request (ipmitool mc info).
#   sushy-emulator: power changes apply 1-11 s (random) after the Reset action returns 204: poll.
#     ResetType On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, Nmi, ForceOn;
#     anything else is 501. No SessionService (404): Basic auth only. Boot override
#     "Once" reads back as "Continuous". /Systems/node-1 is a 307 redirect to the UUID URL.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-redfish
RF_SPEC=(sushy-tools==2.2.0 bcrypt==5.0.0)
log() { printf '[peers/bmc] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
. "$HERE/apt.sh"
port_arg() { [[ $1 =~ ^[0-9]+$ && $1 -ge 1 && $1 -le 65535 ]] || die "bad port: $1"; }

install() {
	apt_install openipmi ipmitool openssl
	venv_pinned "$VENV" 'import sushy_tools, bcrypt' "${RF_SPEC[@]}"
	log "openipmi $(dpkg-query -W -f '${Version}' openipmi); $(ipmitool -V); sushy-tools $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("sushy-tools"))')"
}

ipmi_sim_cmd() {
	[[ $# -eq 2 || ( $# -eq 3 && $3 == hot ) ]] || die "usage: $0 ipmi-sim DIR PORT [hot]"
	local dir=$1 port=$2 hot=${3:-}
	port_arg "$port"
	command -v ipmi_sim >/dev/null || die "ipmi_sim missing: run $0 install first"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	rm -rf "$dir/state" "$dir"/chassis-*
	mkdir -p "$dir/state"
	# chassis_control program: ipmi_sim runs "<prog> <mc> get <param>..." (must print
	# "param:value" lines) and "<prog> <mc> set <param> <value>..." (exit 0 = done).
	cat >"$dir/chassis.sh" <<'EOF'
#!/bin/sh
dir=$(dirname "$0")/chassis-$1
mkdir -p "$dir"; [ -f "$dir/power" ] || echo 1 >"$dir/power"; [ -f "$dir/boot" ] || echo default >"$dir/boot"
op=$2; shift 2
case $op in
get) for p in "$@"; do case $p in
	power) echo "power:$(cat "$dir/power")" ;;
	boot) echo "boot:$(cat "$dir/boot")" ;;
	*) echo "Invalid parameter: $p"; exit 1 ;;
	esac; done ;;
set) while [ $# -gt 0 ]; do p=$1; v=${2:-}; shift; [ $# -gt 0 ] && shift
	case $p in
	power) echo "$v" >"$dir/power" ;;
	boot) echo "$v" >"$dir/boot" ;;
	reset | shutdown) ;;
	identify) [ $# -gt 0 ] && shift ;; # identify <interval> <force>
	*) echo "Invalid parameter: $p"; exit 1 ;;
	esac
	echo "$(date +%s) $p=$v" >>"$dir/events"; done ;;
*) exit 1 ;;
esac
EOF
	chmod +x "$dir/chassis.sh"
	cat >"$dir/lan.conf" <<EOF
name "opslet-bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $port
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "$dir/chassis.sh 0x20"
  user 1 false "" "" user 10 none md2 md5 straight
  user 2 true "admin" "${BMC_PASSWORD:-opslet-bmc-pw}" admin 10 none md2 md5 straight
EOF
	local cpu=0x30 sel2=""   # CPU_Temp raw value = degrees C (M=1)
	if [[ $hot == hot ]]; then
		cpu=0x5f
		sel2="sel_add 0x20 0x02 0x00 0x00 0x00 0x00 0x20 0x00 0x04 0x01 0x01 0x01 0x59 0x5f 0x5a"
	fi
	# Every SDR byte must be written 0x.. (main_sdr_add parses with base 0: "c0" is rejected,
	# and a rejected line silently leaves the BMC without its LAN socket); 'X is one ASCII char.
	# Type-01 SDR: 5-byte header (record id LE, version 0x51, type 0x01, length = 43 + id length).
	cat >"$dir/bmc.emu" <<EOF
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
sel_enable 0x20 1000 0x0a
sensor_add 0x20 0 0 35 0x6f event-only
sensor_set_event_support 0x20 0 0 enable scanning per-state \\
	000000000001111 000000000000000 \\
	000000000001111 000000000000000
# 1: CPU_Temp, degrees C (unit 0x01), M=1: raw = degrees; thresholds UNR 100, UC 90, UNC 80
sensor_add 0x20 0 1 0x01 0x01
main_sdr_add 0x20 \\
  0x00 0x00 0x51 0x01 0x33 \\
  0x20 0x00 0x01 0x03 0x01 0x67 0x88 0x01 0x01 0xc0 0x0f 0xc0 0x7f 0x38 0x38 0x00 \\
  0x01 0x00 0x00 0x01 0x00 0x00 0x00 0x00 0x00 0x03 0x30 0xb0 0x00 0xff 0x00 0x64 \\
  0x5a 0x50 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xc8 'C 'P 'U '_ 'T 'e 'm 'p
sensor_set_threshold 0x20 0 1 settable 111000 0x64 0x5a 0x50 00 00 00
sensor_set_event_support 0x20 0 1 enable scanning per-state \\
	000111111000000 000111111000000 \\
	000111111000000 000111111000000
sensor_set_value 0x20 0 1 $cpu 0
# 2: FAN1, RPM (unit 0x12), M=50: raw 64 -> 3200 RPM
sensor_add 0x20 0 2 0x04 0x01
main_sdr_add 0x20 \\
  0x00 0x01 0x51 0x01 0x2f \\
  0x20 0x00 0x02 0x1d 0x01 0x67 0x88 0x04 0x01 0x00 0x00 0x00 0x00 0x00 0x00 0x00 \\
  0x12 0x00 0x00 0x32 0x00 0x00 0x00 0x00 0x00 0x01 0x40 0xff 0x00 0xff 0x00 0x00 \\
  0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xc4 'F 'A 'N '1
sensor_set_value 0x20 0 2 0x40 0
sensor_set_event_support 0x20 0 2 enable scanning per-state \\
	000000000000000 000000000000000 \\
	000000000000000 000000000000000
# 3: 12V, Volts (unit 0x04), M=6 Rexp=-2: raw 200 -> 12.00 V
sensor_add 0x20 0 3 0x02 0x01
main_sdr_add 0x20 \\
  0x00 0x02 0x51 0x01 0x2e \\
  0x20 0x00 0x03 0x14 0x01 0x67 0x88 0x02 0x01 0x00 0x00 0x00 0x00 0x00 0x00 0x00 \\
  0x04 0x00 0x00 0x06 0x00 0x00 0x00 0x00 0xe0 0x01 0xc8 0xff 0x00 0xff 0x00 0x00 \\
  0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xc3 '1 '2 'V
sensor_set_value 0x20 0 3 0xc8 0
sensor_set_event_support 0x20 0 3 enable scanning per-state \\
	000000000000000 000000000000000 \\
	000000000000000 000000000000000
# SEL: record type 0x02, timestamp 0 (ipmi_sim stamps it), generator 0x20, EvM rev 0x04,
# sensor type 0x01 (temperature) #1, threshold assertion; data1 = 0x50|offset, data2 = reading,
# data3 = threshold. Offset 7 = upper non-critical going high, 9 = upper critical going high.
sel_add 0x20 0x02 0x00 0x00 0x00 0x00 0x20 0x00 0x04 0x01 0x01 0x01 0x57 0x52 0x50
$sel2
mc_enable 0x20
EOF
	# -n: no console on stdin
	exec ipmi_sim -n -c "$dir/lan.conf" -f "$dir/bmc.emu" -s "$dir/state"
}

redfish() {
	[[ $# -eq 2 || ( $# -eq 3 && $3 == tls ) ]] || die "usage: $0 redfish DIR PORT [tls]"
	local dir=$1 port=$2 tls=${3:-}
	port_arg "$port"
	[[ -x $VENV/bin/sushy-emulator ]] || die "sushy-emulator missing: run $0 install first"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	rm -rf "$dir/state"
	mkdir -p "$dir/state"
	BMC_PASSWORD=${BMC_PASSWORD:-opslet-bmc-pw} "$VENV/bin/python" -c 'import bcrypt, os; print("admin:" + bcrypt.hashpw(os.environ["BMC_PASSWORD"].encode(), bcrypt.gensalt(rounds=5)).decode())' >"$dir/htpasswd"
	cat >"$dir/sushy.conf" <<EOF
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = $port
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_STATE_DIR = '$dir/state'
SUSHY_EMULATOR_AUTH_FILE = '$dir/htpasswd'
SUSHY_EMULATOR_FAKE_SYSTEMS = [
    {'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094', 'name': 'node-1', 'power_state': 'Off',
     'external_notifier': False, 'nics': [{'mac': '00:5c:52:31:3a:9c'}]},
    {'uuid': '0f7e8a4c-4a8b-4b7e-9a40-7d0a3f7c2c11', 'name': 'node-2', 'power_state': 'Off',
     'external_notifier': False, 'nics': [{'mac': '00:5c:52:31:3a:9d'}]},
]
EOF
	if [[ $tls == tls ]]; then
		# A CA of its own (DIR/ca.crt, what clients trust) signs the server's certificate, as a
		# site's BMC CA would: a self-signed CA certificate cannot also be a server's.
		{
			openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
				-keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=opslet test BMC CA" &&
				openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
					-keyout "$dir/tls.key" -out "$dir/tls.csr" -subj /CN=127.0.0.1 &&
				printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/tls.ext" &&
				openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
					-days 3650 -extfile "$dir/tls.ext" -out "$dir/tls.crt"
		} >/dev/null 2>&1 || die "openssl failed"
		cat >>"$dir/sushy.conf" <<EOF
SUSHY_EMULATOR_SSL_CERT = '$dir/tls.crt'
SUSHY_EMULATOR_SSL_KEY = '$dir/tls.key'
EOF
	fi
	exec "$VENV/bin/sushy-emulator" --config "$dir/sushy.conf"
}

cmd=${1:-}
shift || true
case $cmd in
install) install "$@" ;;
ipmi-sim) ipmi_sim_cmd "$@" ;;
redfish) redfish "$@" ;;
*) echo "usage: $0 install | ipmi-sim DIR PORT [hot] | redfish DIR PORT [tls]" >&2; exit 2 ;;
esac
