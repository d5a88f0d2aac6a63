#!/usr/bin/env bash
# The OpenStack peer for the virt module's OpenStack backend: a real, minimal control plane on
# 127.0.0.1 — Keystone, Nova (fake virt driver: servers go ACTIVE/SHUTOFF/... without any VM),
# Placement and Glance from PyPI (versions pinned in openstack/constraints.txt), RabbitMQ and
# MariaDB from Debian, and a tiny Neutron stand-in (openstack/neutron_stub.py: empty lists; Nova
# only needs the endpoint for servers created with "networks": "none").
#
#   scripts/peers/openstack.sh install
#       Debian packages rabbitmq-server, mariadb-server (their system services are not used) and
#       a venv ${OPSLET_PEERS_DIR:-.peers}/venv-openstack with keystone nova openstack-placement
#       glance uwsgi pymysql under the pinned constraints (no openstackclient: setup talks to the
#       APIs with openstack/setup.py, Python's standard library only). uWSGI builds from source
#       (gcc); pip's wheel cache makes later installs quicker.
#   scripts/peers/openstack.sh start
#       idempotent (already up and answering: says so, exits 0; half up: stops it and starts
#       afresh). A fresh state at every start under $OPSLET_OPENSTACK_DIR (default
#       ${TMPDIR:-/tmp}/opslet-openstack-UID, never in the checkout): etc/ (configs), logs/ (one
#       log per step and service; a failing step prints the tail of its log), run/ (one PID file
#       per service: each runs in a session of its own), data/ (sqlite, MariaDB, images).
#       Start to ready: ~45-60 s on 2 cores (database syncs and Python imports, run in parallel;
#       the critical path is MariaDB + four nova-manage runs, then nova-compute's first report);
#       ~1.5 GB RSS when up. Stop: ~8 s.
#   scripts/peers/openstack.sh stop
#       by the recorded PIDs, each service's whole process group: Nova first, RabbitMQ and
#       MariaDB last; SIGTERM, SIGKILL after a bound; then checks that the ports are closed.
#   scripts/peers/openstack.sh env | status
#       shell lines OPSLET_OS_*= for tests and humans | which services answer (exit 0: all).
#   scripts/peers/openstack/check.sh
#       an end-to-end check with curl (token, catalog, server life cycle, No valid host,
#       hypervisors, all_tenants, application credentials): for humans and debugging.
#
# Ports (from $OPSLET_OPENSTACK_PORT_BASE, default 25000; all on 127.0.0.1): +0 Keystone
# (http://127.0.0.1:25000/v3), +1 Placement, +2 Nova API (/v2.1), +3 Glance, +4 AMQP, +5 the
# Neutron stand-in, +7 epmd, +8 Erlang distribution, +9 MariaDB, +10..+20 rabbitmqctl (if used).
# Credentials: admin/adminpass (project admin, domain Default, role admin); opslet-demo-user/
# demopass (project opslet-demo, role member: a non-admin); services use servicepass. Region
# RegionOne. Fixtures: public image "tiny" (1 MiB raw), flavors m1.tiny (512 MB, 1 GB disk, 1
# vCPU) and m1.huge (32 GiB RAM: 4x the fake host's, so a server with it goes to ERROR with the
# fault "No valid host was found"; still within Nova's default RAM quota of 50 GiB, above which
# the API answers 403 before scheduling); a flavor's id is its name. The fake host
# "opslet-compute" (nova.virt.fake.SmallFakeDriver) has 2 vCPUs x 16 (allocation ratio) and
# 8 GiB RAM: 16 m1.tiny servers at a time. Nova's servers API needs the header
# "OpenStack-API-Version: compute 2.37" (or later) for "networks": "none"; Nova's /images proxy
# only exists up to 2.35: use Glance's /v2/images.
#
# Nova's default quotas stand: 10 servers, 20 vCPUs, 50 GiB RAM a project. Resize works (to the
# same host: allow_resize_to_same_host); cold and live migration have no second host to go to.
#
# Gotchas this handles: Nova's and Placement's databases live in MariaDB (on SQLite, Nova's
# delete failed with "database is locked", and so did Placement with 10 servers created at once:
# one went to ERROR); Keystone and Glance keep SQLite. uWSGI's --http-socket closes each
# connection, so every response says "Connection: close" (else clients that reuse connections
# get ECONNRESET). The compute host is mapped with `nova-manage cell_v2 discover_hosts` as soon
# as it is a resource provider (the scheduler's periodic discovery took ~35 s; until mapped, the
# node is missing from os-hypervisors). nova-compute runs without database settings (with them
# it logs "No DB access allowed in nova-compute" tracebacks). Password hashing at 4 bcrypt
# rounds (every service token is a password login).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SUP=$HERE/openstack
VENV=${OPSLET_PEERS_DIR:-$ROOT/.peers}/venv-openstack
V=$VENV/bin
CONSTRAINTS=$SUP/constraints.txt
SPEC=(-c "$CONSTRAINTS" keystone nova openstack-placement glance uwsgi pymysql)
DIR=${OPSLET_OPENSTACK_DIR:-${TMPDIR:-/tmp}/opslet-openstack-$(id -u)}
# Fixed ports are below 32768, outside Linux's ephemeral range (32768-60999), so no outgoing connection of another
# process (zabbix_server's to its database, say) can hold one when the peer starts.
BASE=${OPSLET_OPENSTACK_PORT_BASE:-25000}
P_KEYSTONE=$BASE P_PLACEMENT=$((BASE + 1)) P_NOVA=$((BASE + 2)) P_GLANCE=$((BASE + 3))
P_AMQP=$((BASE + 4)) P_NEUTRON=$((BASE + 5)) P_EPMD=$((BASE + 7)) P_DIST=$((BASE + 8)) P_DB=$((BASE + 9))
ETC=$DIR/etc LOGS=$DIR/logs RUN=$DIR/run DATA=$DIR/data
COMPUTE_HOST=opslet-compute
RABBIT=/usr/lib/rabbitmq/bin/rabbitmq-server MARIADBD=/usr/sbin/mariadbd
# stop order, one tier at a time
TIERS=("nova-api nova-compute nova-scheduler nova-conductor" "neutron-stub glance placement keystone" "rabbitmq epmd" "mariadb")
SERVICES=(keystone placement nova-api glance neutron-stub nova-conductor nova-scheduler nova-compute rabbitmq epmd mariadb)
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
export OPSLET_OS_PORT_BASE=$BASE OPSLET_OS_STATE=$DIR OPSLET_OS_COMPUTE_HOST=$COMPUTE_HOST
log() { printf '[peers/openstack] %s\n' "$*" >&2; }
. "$HERE/apt.sh"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

install() {
	local t0 sum
	t0=$(now)
	apt_install rabbitmq-server mariadb-server mariadb-client curl procps iproute2 gcc
	python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
		apt_install python3-dev # uWSGI compiles against Python's headers
	# a changed constraints file reinstalls (venv_pinned compares only the command line)
	sum=$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)
	[[ $(cat "$VENV/.opslet-constraints" 2>/dev/null) == "$sum" ]] || rm -f "$VENV/.opslet-spec"
	venv_pinned "$VENV" 'import os, sys, keystone, nova, placement, glance, pymysql; assert os.access(os.path.join(sys.prefix, "bin", "uwsgi"), os.X_OK)' "${SPEC[@]}"
	echo "$sum" >"$VENV/.opslet-constraints"
	log "install: $(since "$t0") s"
}

# ---------------------------------------------------------------- processes
# starttime PID: the process's start time in clock ticks (field 22 of /proc/PID/stat)
starttime() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	set -- $s
	echo "${20}"
}
# daemon NAME LOG CMD...: CMD in a session of its own (its PID is its process group), fd 9 (the
# start lock) closed; "PID STARTTIME" in run/NAME.pid.
daemon() {
	local name=$1 out=$2
	shift 2
	setsid "$@" >>"$out" 2>&1 </dev/null 9>&- &
	echo "$! $(starttime $!)" >"$RUN/$name.pid"
}
# group NAME: the recorded process group if it is still ours (its leader is the process we
# started, or the leader is gone and members remain: a PID stays allocated while its group has
# members), else fails.
group() {
	local pid st cur
	read -r pid st 2>/dev/null <"$RUN/$1.pid" || return 1
	[[ -n $pid ]] || return 1
	cur=$(starttime "$pid") || cur=
	[[ -z $cur || $cur == "$st" ]] || return 1
	echo "$pid"
}
# members PGID: the live (not zombie) processes of that group
members() { ps -e -o pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'; }
alive() {
	local g
	g=$(group "$1") || return 1
	[[ -n $(members "$g") ]]
}

# ---------------------------------------------------------------- readiness
http_code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true; }
# an HTTP service answers: any status below 500 on /
http_ok() {
	local c
	c=$(http_code "$1")
	[[ $c != 000 && $c -lt 500 ]]
}
tcp_ok() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
db_ok() { mariadb -S "$RUN/mysql.sock" -u root -e 'select 1' >/dev/null 2>&1; }
answers() {
	case $1 in
	keystone) http_ok "$P_KEYSTONE" ;;
	placement) http_ok "$P_PLACEMENT" ;;
	nova-api) http_ok "$P_NOVA" ;;
	glance) http_ok "$P_GLANCE" ;;
	neutron-stub) http_ok "$P_NEUTRON" ;;
	rabbitmq) tcp_ok "$P_AMQP" ;;
	epmd) tcp_ok "$P_EPMD" ;;
	mariadb) tcp_ok "$P_DB" ;;
	*) alive "$1" ;; # nova-conductor/-scheduler/-compute listen on nothing
	esac
}
all_up() {
	local s
	[[ -s $DIR/env ]] || return 1
	for s in "${SERVICES[@]}"; do alive "$s" && answers "$s" || return 1; done
}

# fail WHAT LOG: says what failed with the tail of its log, exits: a background step's subshell
# (its join stops the rest), or the script itself after stopping what the start started
fail() {
	log "FAILED: $1; tail of $2:"
	tail -n 40 "$2" 2>/dev/null | sed 's/^/    /' >&2 || true
	[[ $BASHPID == "$$" && -n ${STARTING:-} ]] && abort_start
	exit 1
}
# abort_start: ends the background steps (and the command each is running), then stops every
# service started so far; logs stay
abort_start() {
	local c kids=()
	log "stopping what was started (logs stay in $LOGS)"
	# a step's command, not the services the step started (each leads a session of its own: stop_all
	# ends those in order)
	for c in "${CHAINS[@]}"; do kids+=($(ps -o pid=,pgid= --ppid "$c" 2>/dev/null | awk '$1 != $2 {print $1}' || true)); done
	kill "${CHAINS[@]}" "${kids[@]}" 2>/dev/null || true
	for c in "${CHAINS[@]}"; do wait "$c" 2>/dev/null || true; done
	stop_all || true
}
# step WHAT LOG CMD...: runs CMD with its output appended to LOG, fails with the log's tail
step() {
	local what=$1 out=$2 t0
	shift 2
	t0=$(now)
	echo "== $(date +%T) $what: $*" >>"$out"
	"$@" >>"$out" 2>&1 </dev/null || fail "$what" "$out"
	log "$what: $(since "$t0") s"
}
# wait_for SECONDS SERVICE LOG: until SERVICE answers; fails early when its processes are gone
wait_for() {
	local secs=$1 svc=$2 out=$3 i
	for ((i = 0; i < secs * 4; i++)); do
		answers "$svc" && return 0
		alive "$svc" || fail "$svc exited" "$out"
		sleep 0.25
	done
	fail "$svc did not answer within $secs s" "$out"
}

# ---------------------------------------------------------------- configuration
write_configs() {
	local auth
	auth="auth_url = http://127.0.0.1:$P_KEYSTONE/v3
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
region_name = RegionOne
password = servicepass"
	cat >"$ETC/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOGS/keystone.log
[database]
connection = sqlite:///$DATA/keystone.db
[identity]
# test users: cheap hashes (every service token is a password login)
password_hash_rounds = 4
[token]
provider = fernet
[fernet_tokens]
key_repository = $ETC/fernet-keys
[fernet_receipts]
key_repository = $ETC/fernet-keys
[credential]
key_repository = $ETC/credential-keys
EOF
	cat >"$ETC/placement.conf" <<EOF
[DEFAULT]
log_file = $LOGS/placement.log
[api]
auth_strategy = keystone
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$P_KEYSTONE/v3
$auth
username = placement
[placement_database]
connection = mysql+pymysql://placement:placementpass@127.0.0.1:$P_DB/placement?charset=utf8
EOF
	cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/"
	cat >"$ETC/glance-api.conf" <<EOF
[DEFAULT]
log_file = $LOGS/glance.log
worker_self_reference_url = http://127.0.0.1:$P_GLANCE
enabled_backends = fs:file
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $DATA/images
[os_glance_staging_store]
filesystem_store_datadir = $DATA/staging
[os_glance_tasks_store]
filesystem_store_datadir = $DATA/tasks
[database]
connection = sqlite:///$DATA/glance.db
[paste_deploy]
flavor = keystone
config_file = $ETC/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$P_KEYSTONE/v3
$auth
username = glance
# every token checked with Keystone (no cache): a revoked token is refused at once, as the
# client's re-login test needs
token_cache_time = -1
EOF
	cp "$VENV/etc/nova/api-paste.ini" "$ETC/"
	local db="mysql+pymysql://nova:novapass@127.0.0.1:$P_DB"
	cat >"$ETC/nova.conf" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:$P_AMQP/
compute_driver = fake.SmallFakeDriver
host = $COMPUTE_HOST
my_ip = 127.0.0.1
state_path = $DATA/nova
instances_path = $DATA/nova/instances
# SmallFakeDriver: 2 vCPUs, 8 GiB RAM, 1028 GB disk; room for 16 m1.tiny servers at a time
cpu_allocation_ratio = 16.0
ram_allocation_ratio = 1.0
reserved_host_memory_mb = 0
# stop promptly on SIGTERM (the state is thrown away)
graceful_shutdown_timeout = 5
# one compute host: a resize must be allowed to stay on it (else NoValidHost, back to ACTIVE)
allow_resize_to_same_host = true
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = $ETC/api-paste.ini
[api_database]
connection = $db/nova_api?charset=utf8
[database]
connection = $db/nova?charset=utf8
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$P_KEYSTONE/v3
$auth
username = nova
# every token checked with Keystone (no cache): a revoked token is refused at once, as the
# client's re-login test needs
token_cache_time = -1
[service_user]
send_service_user_token = true
$auth
username = nova
[placement]
$auth
username = placement
[neutron]
$auth
username = neutron
[glance]
$auth
username = glance
[scheduler]
# the start maps the host itself (nova-manage cell_v2 discover_hosts)
discover_hosts_in_cells_interval = -1
workers = 1
[conductor]
workers = 1
[oslo_concurrency]
lock_path = $DATA/locks
[vnc]
enabled = false
EOF
	# nova-compute gets no database (it must not have one: with [database] and [api_database]
	# set it tries them and logs "No DB access allowed in nova-compute" tracebacks)
	awk '/^\[/ {skip = ($0 == "[database]" || $0 == "[api_database]")} !skip' "$ETC/nova.conf" >"$ETC/nova-compute.conf"
	RABBIT_ENV=(HOME="$DATA/rabbit" RABBITMQ_NODENAME=rabbit@localhost
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$P_AMQP" RABBITMQ_DIST_PORT="$P_DIST"
		ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$P_EPMD"
		RABBITMQ_CTL_DIST_PORT_MIN=$((BASE + 10)) RABBITMQ_CTL_DIST_PORT_MAX=$((BASE + 20))
		RABBITMQ_MNESIA_BASE="$DATA/rabbit/mnesia" RABBITMQ_LOG_BASE="$LOGS/rabbitmq"
		RABBITMQ_PID_FILE="$RUN/rabbitmq-beam.pidfile" RABBITMQ_CONFIG_FILE="$ETC/rabbitmq"
		RABBITMQ_ENABLED_PLUGINS_FILE="$ETC/rabbitmq-enabled-plugins"
		RABBITMQ_ADVANCED_CONFIG_FILE="$ETC/rabbitmq-advanced.config"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false")
	# for humans: `. etc/rabbitmq-env.sh; /usr/lib/rabbitmq/bin/rabbitmqctl status`
	printf 'export %q\n' "${RABBIT_ENV[@]}" >"$ETC/rabbitmq-env.sh"
	echo '[].' >"$ETC/rabbitmq-enabled-plugins"
	echo '[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].' >"$ETC/rabbitmq-advanced.config"
	echo 'loopback_users.guest = true' >"$ETC/rabbitmq.conf"
	cat >"$ETC/admin-openrc" <<EOF
export OS_AUTH_URL=http://127.0.0.1:$P_KEYSTONE/v3 OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne
export OS_USERNAME=admin OS_PASSWORD=adminpass OS_PROJECT_NAME=admin
export OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default
EOF
}

# uWSGI serving one WSGI app on 127.0.0.1:PORT. --http-socket closes every connection after the
# response, so say so (clients that reuse connections get ECONNRESET otherwise); --need-app
# exits when the app fails to load instead of answering 500s; --worker-reload-mercy: a worker
# still busy 5 s after SIGTERM is killed (nova-api's threads kept it up past 20 s; default 60 s).
uwsgi_app() { # uwsgi_app NAME PORT MODULE ENV...
	local name=$1 port=$2 module=$3
	shift 3
	daemon "$name" "$LOGS/$name-uwsgi.log" env "$@" "$V/uwsgi" --home "$VENV" --http-socket "127.0.0.1:$port" \
		--module "$module" --need-app --master --processes 1 --threads 4 --die-on-term --lazy-apps \
		--buffer-size 65535 --add-header Connection:close --disable-logging --worker-reload-mercy 5
}

# ---------------------------------------------------------------- start steps (some in parallel)
# epmd first, our own (on its port, in its own group); erl is told not to start one (by default
# it runs `epmd -daemon`, which outlives everything when ours is not up at that moment)
start_rabbitmq() {
	daemon epmd "$LOGS/epmd.log" env ERL_EPMD_ADDRESS=127.0.0.1 epmd -port "$P_EPMD"
	wait_for 20 epmd "$LOGS/epmd.log"
	daemon rabbitmq "$LOGS/rabbitmq.out" env "${RABBIT_ENV[@]}" "$RABBIT"
}

# MariaDB for Nova's three databases and Placement's, then the Nova schema and cells
db_chain() {
	local i sql=(mariadb -S "$RUN/mysql.sock" -u root) N=("$V/nova-manage" --config-file "$ETC/nova.conf")
	step "mariadb-install-db" "$LOGS/mariadb-install.log" mariadb-install-db --no-defaults --datadir="$DATA/mysql" \
		--user=root --auth-root-authentication-method=socket --skip-test-db
	# throwaway data: no fsync, no doublewrite, no binlog
	daemon mariadb "$LOGS/mariadb.out" "$MARIADBD" --no-defaults --datadir="$DATA/mysql" --socket="$RUN/mysql.sock" \
		--port="$P_DB" --bind-address=127.0.0.1 --user=root --pid-file="$RUN/mariadbd.pidfile" \
		--log-error="$LOGS/mariadb.log" --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=64M \
		--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --max-connections=500
	for ((i = 0; i < 240; i++)); do
		db_ok && break
		alive mariadb || fail "mariadbd exited" "$LOGS/mariadb.log"
		sleep 0.25
	done
	db_ok || fail "mariadb did not answer within 60 s" "$LOGS/mariadb.log"
	step "databases nova_api, nova, nova_cell0, placement" "$LOGS/mariadb-setup.log" "${sql[@]}" -e "
		CREATE USER 'nova'@'127.0.0.1' IDENTIFIED BY 'novapass';
		CREATE DATABASE nova_api; CREATE DATABASE nova; CREATE DATABASE nova_cell0;
		GRANT ALL ON nova_api.* TO 'nova'@'127.0.0.1'; GRANT ALL ON nova.* TO 'nova'@'127.0.0.1';
		GRANT ALL ON nova_cell0.* TO 'nova'@'127.0.0.1';
		CREATE USER 'placement'@'127.0.0.1' IDENTIFIED BY 'placementpass';
		CREATE DATABASE placement; GRANT ALL ON placement.* TO 'placement'@'127.0.0.1';"
	touch "$RUN/databases-created"
	step "nova-manage api_db sync" "$LOGS/nova-manage.log" "${N[@]}" api_db sync
	step "nova-manage cell_v2 map_cell0" "$LOGS/nova-manage.log" "${N[@]}" cell_v2 map_cell0 \
		--database_connection "mysql+pymysql://nova:novapass@127.0.0.1:$P_DB/nova_cell0?charset=utf8"
	step "nova-manage cell_v2 create_cell" "$LOGS/nova-manage.log" "${N[@]}" cell_v2 create_cell --name cell1
	step "nova-manage db sync" "$LOGS/nova-manage.log" "${N[@]}" db sync
}

keystone_chain() {
	local K=("$V/keystone-manage" --config-file "$ETC/keystone.conf")
	step "keystone-manage db_sync" "$LOGS/keystone-manage.log" "${K[@]}" db_sync
	# what fernet_setup and credential_setup write (keys 0 and 1), without two more keystone-manage runs
	"$V/python" -c 'import base64, os, sys
for d in sys.argv[1:]:
    os.makedirs(d, mode=0o700)
    for i in ("0", "1"):
        fd = os.open(os.path.join(d, i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, base64.urlsafe_b64encode(os.urandom(32)))
        os.close(fd)' "$ETC/fernet-keys" "$ETC/credential-keys"
	step "keystone-manage bootstrap" "$LOGS/keystone-manage.log" "${K[@]}" bootstrap --bootstrap-password adminpass \
		--bootstrap-username admin --bootstrap-project-name admin --bootstrap-role-name admin \
		--bootstrap-region-id RegionOne --bootstrap-admin-url "http://127.0.0.1:$P_KEYSTONE/v3/" \
		--bootstrap-internal-url "http://127.0.0.1:$P_KEYSTONE/v3/" --bootstrap-public-url "http://127.0.0.1:$P_KEYSTONE/v3/"
	uwsgi_app keystone "$P_KEYSTONE" keystone.wsgi.api:application OS_KEYSTONE_CONFIG_DIR="$ETC" OS_KEYSTONE_CONFIG_FILES=keystone.conf
	wait_for 120 keystone "$LOGS/keystone-uwsgi.log"
	step "identity (service users, catalog, demo project and user)" "$LOGS/setup.log" "$V/python" "$SUP/setup.py" identity
}

placement_chain() { # placement_chain PID-OF-DB-CHAIN
	local i
	for ((i = 0; i < 480; i++)); do
		[[ -e $RUN/databases-created ]] && break
		kill -0 "$1" 2>/dev/null || exit 1 # the database step failed (and said so)
		sleep 0.25
	done
	[[ -e $RUN/databases-created ]] || fail "no placement database after 120 s" "$LOGS/mariadb.log"
	step "placement-manage db sync" "$LOGS/placement-manage.log" "$V/placement-manage" --config-file "$ETC/placement.conf" db sync
	uwsgi_app placement "$P_PLACEMENT" placement.wsgi.api:application OS_PLACEMENT_CONFIG_DIR="$ETC"
}

glance_chain() {
	step "glance-manage db_sync" "$LOGS/glance-manage.log" "$V/glance-manage" --config-file "$ETC/glance-api.conf" db_sync
	uwsgi_app glance "$P_GLANCE" glance.wsgi.api:application OS_GLANCE_CONFIG_DIR="$ETC"
}

start_nova() { # start_nova SERVICE...
	local s conf
	for s; do
		if [[ $s == api ]]; then
			uwsgi_app nova-api "$P_NOVA" nova.wsgi.osapi_compute:application OS_NOVA_CONFIG_DIR="$ETC" "OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf"
		else
			conf=$ETC/nova.conf
			[[ $s == compute ]] && conf=$ETC/nova-compute.conf
			daemon "nova-$s" "$LOGS/nova-$s.out" "$V/nova-$s" --config-file "$conf" --log-file "$LOGS/nova-$s.log"
		fi
	done
}

# join NAME PID LOG: waits for a background step; stops what was started and exits if it failed
join() {
	wait "$2" && return 0
	log "start failed in: $1 (the failing step's tail is above)"
	abort_start
	exit 1
}

rss_mib() {
	local s g gs=()
	for s in "${SERVICES[@]}"; do g=$(group "$s") && gs+=("$g"); done
	ps -e -o pgid=,rss= | awk -v l=" ${gs[*]} " 'index(l, " " $1 " ") {t += $2} END {printf "%d", t / 1024}'
}

start() {
	local t0 p s busy
	[[ -x $V/uwsgi && -x $V/nova-compute && -x $V/keystone-manage && -x $V/glance-manage ]] ||
		{ log "no OpenStack venv at $VENV: run $0 install"; exit 1; }
	[[ -x $RABBIT && -x $MARIADBD ]] || { log "rabbitmq-server/mariadb-server missing: run $0 install"; exit 1; }
	mkdir -p "$DIR"
	exec 9>"$DIR/.lock"
	flock 9 # two starts at once: the second waits and finds it running
	mkdir -p "$RUN"
	if all_up; then
		log "already running and answering (Keystone http://127.0.0.1:$P_KEYSTONE/v3, state $DIR)"
		return 0
	fi
	for s in "${SERVICES[@]}"; do
		if alive "$s"; then
			log "partly running or not answering: stopping it first"
			stop_all
			break
		fi
	done
	busy=$(ss -ltnH | awk -v lo="$BASE" -v hi="$((BASE + 99))" '{n = split($4, a, ":"); p = a[n]} p >= lo && p <= hi {print $4}')
	if [[ -n $busy ]]; then
		log "ports in $BASE-$((BASE + 99)) are taken by another process:"
		ss -ltnpH | grep -F "$busy" >&2 || true
		exit 1
	fi
	t0=$(now)
	STARTING=1 CHAINS=()
	# killed while starting (e.g. a test run that stops early): end the steps, stop what is up
	trap 'log "start interrupted"; trap - TERM INT HUP; abort_start; exit 143' TERM INT HUP
	rm -rf "$ETC" "$LOGS" "$RUN" "$DATA" "$DIR/env" "$DIR/image-id"
	mkdir -p "$ETC" "$LOGS" "$RUN" "$DATA"/{images,staging,tasks,nova/instances,locks,rabbit}
	write_configs
	start_rabbitmq
	daemon neutron-stub "$LOGS/neutron-stub.log" "$V/python" "$SUP/neutron_stub.py" "$P_NEUTRON"
	db_chain &
	local j_db=$!
	keystone_chain &
	local j_ks=$!
	placement_chain $j_db &
	local j_pl=$!
	glance_chain &
	local j_gl=$!
	CHAINS=($j_db $j_ks $j_pl $j_gl)
	join "nova databases" $j_db
	start_nova api conductor scheduler
	join "keystone" $j_ks
	join "placement" $j_pl
	wait_for 120 rabbitmq "$LOGS/rabbitmq.out"
	wait_for 120 placement "$LOGS/placement-uwsgi.log"
	# nova-compute reports its node to Placement at start: Keystone and Placement must be up
	start_nova compute
	join "glance" $j_gl
	wait_for 120 glance "$LOGS/glance-uwsgi.log"
	wait_for 120 neutron-stub "$LOGS/neutron-stub.log"
	wait_for 180 nova-api "$LOGS/nova-api-uwsgi.log"
	log "all APIs answer: $(since "$t0") s"
	step "fixtures (image tiny, flavors m1.tiny and m1.huge)" "$LOGS/setup.log" "$V/python" "$SUP/setup.py" fixtures
	step "compute node up" "$LOGS/setup.log" "$V/python" "$SUP/setup.py" compute
	step "nova-manage cell_v2 discover_hosts" "$LOGS/nova-manage.log" "$V/nova-manage" --config-file "$ETC/nova.conf" cell_v2 discover_hosts --verbose
	[[ $(mariadb -S "$RUN/mysql.sock" -u root -N -e "SELECT host FROM nova_api.host_mappings") == "$COMPUTE_HOST" ]] ||
		fail "host $COMPUTE_HOST not mapped to a cell" "$LOGS/nova-manage.log"
	step "hypervisor up" "$LOGS/setup.log" "$V/python" "$SUP/setup.py" hypervisor
	for s in "${SERVICES[@]}"; do alive "$s" || fail "$s exited" "$(ls -t "$LOGS"/"$s"* | head -1)"; done
	print_env >"$DIR/env"
	log "ready in $(since "$t0") s: Keystone http://127.0.0.1:$P_KEYSTONE/v3, ~$(rss_mib) MiB RSS; state and logs in $DIR"
}

# ---------------------------------------------------------------- stop
# stop_tier NAME...: SIGTERM to each group, SIGKILL after 20 s
stop_tier() {
	local s g i left names=() groups=() t0
	t0=$(now)
	for s; do
		if g=$(group "$s") && [[ -n $(members "$g") ]]; then
			kill -TERM -- "-$g" 2>/dev/null || true
			names+=("$s") groups+=("$g")
		fi
	done
	if [[ ${#groups[@]} -eq 0 ]]; then
		for s; do rm -f "$RUN/$s.pid"; done
		return 0
	fi
	for ((i = 0; i < 80; i++)); do
		left=
		for g in "${groups[@]}"; do [[ -n $(members "$g") ]] && left=1; done
		[[ -z $left ]] && break
		sleep 0.25
	done
	for i in "${!groups[@]}"; do
		if [[ -n $(members "${groups[$i]}") ]]; then
			log "${names[$i]} (group ${groups[$i]}) still alive after 20 s: SIGKILL"
			kill -KILL -- "-${groups[$i]}" 2>/dev/null || true
		fi
	done
	log "stopped ${names[*]} in $(since "$t0") s"
	for s; do rm -f "$RUN/$s.pid"; done
}

listening() { ss -ltnH | awk -v lo="$BASE" -v hi="$((BASE + 99))" '{n = split($4, a, ":"); p = a[n]} p >= lo && p <= hi {print p}' | sort -un | tr '\n' ' '; }

stop_all() {
	local t i open
	if ! compgen -G "$RUN/*.pid" >/dev/null; then
		log "not running (no PID files in $RUN)"
	fi
	for t in "${TIERS[@]}"; do stop_tier $t; done
	rm -f "$DIR/env"
	for ((i = 0; i < 40; i++)); do
		open=$(listening)
		[[ -z $open ]] && break
		sleep 0.25
	done
	if [[ -n $open ]]; then
		log "ports still listening in $BASE-$((BASE + 99)): $open"
		ss -ltnpH | grep -E ":($(echo $open | tr ' ' '|')) " >&2 || true
		return 1
	fi
	log "stopped; no port in $BASE-$((BASE + 99)) listening"
}

stop() {
	mkdir -p "$DIR"
	exec 9>"$DIR/.lock"
	flock 9
	stop_all
}

# ---------------------------------------------------------------- env, status
print_env() {
	local image
	image=$(cat "$DIR/image-id" 2>/dev/null || true)
	[[ -n $image ]] || log "no image id yet (start has not finished): OPSLET_OS_IMAGE is empty"
	cat <<EOF
OPSLET_OS_AUTH_URL=http://127.0.0.1:$P_KEYSTONE/v3
OPSLET_OS_REGION=RegionOne
OPSLET_OS_DOMAIN=Default
OPSLET_OS_ADMIN_USER=admin
OPSLET_OS_ADMIN_PASSWORD=adminpass
OPSLET_OS_ADMIN_PROJECT=admin
OPSLET_OS_DEMO_USER=opslet-demo-user
OPSLET_OS_DEMO_PASSWORD=demopass
OPSLET_OS_DEMO_PROJECT=opslet-demo
OPSLET_OS_IMAGE=$image
OPSLET_OS_FLAVOR=m1.tiny
OPSLET_OS_HUGE_FLAVOR=m1.huge
EOF
}

status() {
	local s g ok=0 port
	for s in "${SERVICES[@]}"; do
		case $s in
		keystone) port=$P_KEYSTONE ;; placement) port=$P_PLACEMENT ;; nova-api) port=$P_NOVA ;;
		glance) port=$P_GLANCE ;; neutron-stub) port=$P_NEUTRON ;; rabbitmq) port=$P_AMQP ;;
		epmd) port=$P_EPMD ;; mariadb) port=$P_DB ;; *) port=- ;;
		esac
		g=$(group "$s" 2>/dev/null) || g=-
		if alive "$s" && answers "$s"; then
			printf '  %-15s %-6s pid %-8s up\n' "$s" "$port" "$g"
		else
			printf '  %-15s %-6s pid %-8s DOWN\n' "$s" "$port" "$g"
			ok=1
		fi
	done
	if http_ok "$P_KEYSTONE" && http_ok "$P_NOVA"; then
		echo "  nova services (os-services):"
		"$V/python" "$SUP/setup.py" services || ok=1
	fi
	[[ -s $DIR/env ]] || { echo "  (start has not completed: no $DIR/env)"; ok=1; }
	return $ok
}

case ${1:-} in
install) install ;;
start) start ;;
stop) stop ;;
env) print_env ;;
status) status ;;
*)
	echo "usage: $0 install|start|stop|env|status" >&2
	exit 2
	;;
esac
