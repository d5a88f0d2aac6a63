#!/usr/bin/env bash
# Test peer for the zabbix module: a real Zabbix 6.0 (Debian's packages) with its own private
# PostgreSQL cluster, the PHP frontend's JSON-RPC API served by `php -S`, and zabbix_server for
# problems, acknowledgements and maintenance; zabbix_sender feeds values.
#
#   scripts/peers/zabbix.sh install   Debian packages (about a minute the first time)
#   scripts/peers/zabbix.sh start     PostgreSQL + schema (first time) + frontend + server; idempotent
#   scripts/peers/zabbix.sh stop      each process group by the PID recorded at start
#   scripts/peers/zabbix.sh env       prints ZABBIX_URL for tests
#
# Everything listens on 127.0.0.1; state, logs and PID files live under $OPSLET_ZABBIX_STATE.
set -euo pipefail

STATE=${OPSLET_ZABBIX_STATE:-/tmp/opslet-zabbix}
# Fixed ports are below 32768, outside Linux's ephemeral range (32768-60999), so no outgoing connection of another
# process (zabbix_server's to its database, say) can hold one when the peer starts.
ZBX_PG_PORT=${ZBX_PG_PORT:-25432}
ZBX_WEB_PORT=${ZBX_WEB_PORT:-18080}
ZBX_TRAPPER_PORT=${ZBX_TRAPPER_PORT:-10051}
ZBX_PHP_WORKERS=${ZBX_PHP_WORKERS:-4}
PGBIN=/usr/lib/postgresql/15/bin
ZBX_SQL=/usr/share/zabbix-server-pgsql
ZABBIX_URL="http://127.0.0.1:${ZBX_WEB_PORT}/api_jsonrpc.php"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# ---------------------------------------------------------------- helpers
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_group PIDFILE NAME: SIGTERM the process group started with setsid,
# wait up to 30 s, then SIGKILL that group.
stop_group() {
  local pf=$1 name=$2 pid i
  if ! pid_alive "$pf"; then rm -f "$pf"; log "$name: not running"; return 0; fi
  pid=$(cat "$pf")
  [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] || die "$name: pid $pid is not a group leader, refusing"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 60); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 -- "-$pid" 2>/dev/null; then log "$name: still alive, SIGKILL group $pid"; kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$pf"; log "$name: stopped (pid $pid)"
}

# wait_http URL SECONDS
wait_http() {
  local url=$1 t=$2 i
  for i in $(seq 1 $((t * 4))); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.25
  done
  return 1
}

apt_install() {  # apt_install PKG... (only the missing ones; waits for the dpkg lock)
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && { log "apt: all present: $*"; return 0; }
  log "apt: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
    --no-install-recommends "${missing[@]}" >"$STATE/apt-install.log" 2>&1 \
    || { tail -20 "$STATE/apt-install.log" >&2; die "apt-get install failed"; }
}

# ================================================================= ZABBIX
zbx_api() {  # zbx_api METHOD PARAMS_JSON [AUTH]
  local body
  if [ -n "${3:-}" ]; then body="{\"jsonrpc\":\"2.0\",\"method\":\"$1\",\"params\":$2,\"auth\":\"$3\",\"id\":1}"
  else body="{\"jsonrpc\":\"2.0\",\"method\":\"$1\",\"params\":$2,\"id\":1}"; fi
  curl -sS --max-time 30 -H 'Content-Type: application/json-rpc' -d "$body" "$ZABBIX_URL"
}
jget() { python3 -c 'import sys,json; d=json.load(sys.stdin); exec("r="+sys.argv[1]); print(r)' "$1"; }

zabbix_install() {
  mkdir -p "$STATE"
  local t0; t0=$(now)
  # zabbix-agent only for /usr/bin/zabbix_sender; its daemon is never started here.
  apt_install postgresql-15 zabbix-server-pgsql zabbix-frontend-php php-cli php-cgi php-pgsql zabbix-agent
  log "zabbix install: $(elapsed "$t0") s"
}

zabbix_pg_start() {
  local d="$STATE/pg"
  mkdir -p "$d"; chown postgres:postgres "$d"
  runuser -u postgres -- test -w "$d" || die "$d is not reachable by user postgres: put OPS_TEST_STATE under a world-traversable directory (e.g. /tmp)"
  if [ ! -f "$d/data/PG_VERSION" ]; then
    runuser -u postgres -- "$PGBIN/initdb" -D "$d/data" -U postgres -A trust -E UTF8 \
      --locale=C.UTF-8 --no-sync >"$STATE/pg-initdb.log" 2>&1 || die "initdb failed (see $STATE/pg-initdb.log)"
  fi
  if runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
    log "postgres: already running"
  else
    # Test-only durability settings: fsync off makes the schema load several times faster.
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$ZBX_PG_PORT -c unix_socket_directories=$d -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB -c max_connections=100" \
      start >/dev/null || { tail -20 "$d/postgres.log" >&2; die "postgres did not start"; }
  fi
  head -1 "$d/data/postmaster.pid" >"$STATE/postgres.pid"
  log "postgres: up on 127.0.0.1:$ZBX_PG_PORT (pid $(cat "$STATE/postgres.pid"))"
}

zabbix_db_init() {
  local d="$STATE/pg" P t0
  P=(env PGOPTIONS='-c client_min_messages=warning' psql -h "$d" -p "$ZBX_PG_PORT" -X -q -v ON_ERROR_STOP=1)
  if "${P[@]}" -U zabbix -d zabbix -Atc 'select mandatory from dbversion' >/dev/null 2>&1; then
    log "zabbix db: schema already loaded"; return 0
  fi
  t0=$(now)
  "${P[@]}" -U postgres -d postgres -Atc "select 1 from pg_roles where rolname='zabbix'" | grep -q 1 \
    || "${P[@]}" -U postgres -d postgres -c "CREATE ROLE zabbix LOGIN PASSWORD 'zabbix'"
  "${P[@]}" -U postgres -d postgres -c "DROP DATABASE IF EXISTS zabbix" \
            -c "CREATE DATABASE zabbix OWNER zabbix ENCODING 'UTF8' TEMPLATE template0"
  zcat "$ZBX_SQL/schema.sql.gz" | "${P[@]}" -U zabbix -d zabbix -1 -f - >/dev/null
  zcat "$ZBX_SQL/images.sql.gz" | "${P[@]}" -U zabbix -d zabbix -1 -f - >/dev/null
  # data.sql (~130k INSERTs, has its own BEGIN/COMMIT): skip FK triggers while loading
  # (session_replication_role=replica needs a superuser session), tables stay owned by zabbix.
  zcat "$ZBX_SQL/data.sql.gz" | "${P[@]}" -U postgres -d zabbix \
      -c "SET session_replication_role = replica" -c "SET ROLE zabbix" -f - >/dev/null
  # The stock 'Zabbix server' host polls an agent that does not run here: disable it so
  # no 'agent unavailable' problems show up in problem.get.
  "${P[@]}" -U zabbix -d zabbix -c "UPDATE hosts SET status=1 WHERE host='Zabbix server' AND status=0"
  log "zabbix db: schema+data loaded in $(elapsed "$t0") s"
}

zabbix_frontend_conf() {
  # Debian's frontend reads this fixed path (CConfigFile::CONFIG_FILE_PATH).
  mkdir -p /etc/zabbix
  cat >/etc/zabbix/zabbix.conf.php <<EOF
<?php
// written by opslet scripts/peers/zabbix.sh (test instance)
\$DB['TYPE']           = 'POSTGRESQL';
\$DB['SERVER']         = '127.0.0.1';
\$DB['PORT']           = '$ZBX_PG_PORT';
\$DB['DATABASE']       = 'zabbix';
\$DB['USER']           = 'zabbix';
\$DB['PASSWORD']       = 'zabbix';
\$DB['SCHEMA']         = '';
\$DB['ENCRYPTION']     = false;
\$DB['KEY_FILE']       = '';
\$DB['CERT_FILE']      = '';
\$DB['CA_FILE']        = '';
\$DB['VERIFY_HOST']    = false;
\$DB['CIPHER_LIST']    = '';
\$DB['VAULT_URL']      = '';
\$DB['VAULT_DB_PATH']  = '';
\$DB['VAULT_TOKEN']    = '';
\$DB['DOUBLE_IEEE754'] = true;
\$ZBX_SERVER           = '127.0.0.1';
\$ZBX_SERVER_PORT      = '$ZBX_TRAPPER_PORT';
\$ZBX_SERVER_NAME      = 'ops-test';
\$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
EOF
  chmod 644 /etc/zabbix/zabbix.conf.php
}

zabbix_web_start() {
  local pf="$STATE/zabbix-web.pid"
  if pid_alive "$pf"; then log "zabbix web: already running (pid $(cat "$pf"))"; return 0; fi
  # php -S is the CLI built-in server; PHP_CLI_SERVER_WORKERS forks N workers so
  # parallel test requests are not serialised.
  PHP_CLI_SERVER_WORKERS=$ZBX_PHP_WORKERS setsid php -d date.timezone=UTC \
      -S "127.0.0.1:$ZBX_WEB_PORT" -t /usr/share/zabbix \
      >"$STATE/zabbix-web.log" 2>&1 </dev/null &
  echo $! >"$pf"
  wait_http "http://127.0.0.1:$ZBX_WEB_PORT/robots.txt" 20 || wait_http "http://127.0.0.1:$ZBX_WEB_PORT/index.php" 10 \
    || die "php web server did not answer (see $STATE/zabbix-web.log)"
  log "zabbix web: up on $ZABBIX_URL (pid $(cat "$pf"))"
}

zabbix_server_start() {
  local pf="$STATE/zabbix-server.pid" d="$STATE/zbx" i
  if pid_alive "$pf"; then log "zabbix_server: already running (pid $(cat "$pf"))"; return 0; fi
  mkdir -p "$d"; chown zabbix:zabbix "$d"
  cat >"$d/zabbix_server.conf" <<EOF
ListenIP=127.0.0.1
ListenPort=$ZBX_TRAPPER_PORT
SourceIP=127.0.0.1
LogType=file
LogFile=$d/zabbix_server.log
LogFileSize=0
PidFile=$d/zabbix_server.pid
SocketDir=$d
DBHost=127.0.0.1
DBPort=$ZBX_PG_PORT
DBName=zabbix
DBUser=zabbix
DBPassword=zabbix
# small footprint; trapper + history syncer + timer + task manager are what tests need
StartPollers=1
StartPollersUnreachable=1
StartTrappers=2
StartPingers=0
StartDiscoverers=0
StartHTTPPollers=0
StartAlerters=1
StartEscalators=1
StartTimers=1
StartDBSyncers=1
StartHistoryPollers=1
StartLLDProcessors=1
StartPreprocessors=1
StartReportWriters=0
StartODBCPollers=0
# pick up hosts/items created through the API within ~2 s (default 60 s)
CacheUpdateFrequency=2
HousekeepingFrequency=0
Timeout=4
FpingLocation=/usr/bin/fping
EOF
  # -f keeps it in the foreground so the recorded PID is the real main process;
  # setpriv execs directly (no su/runuser wrapper process) as the zabbix user.
  setsid setpriv --reuid=zabbix --regid=zabbix --init-groups \
      /usr/sbin/zabbix_server -f -c "$d/zabbix_server.conf" >"$d/stdout.log" 2>&1 </dev/null &
  echo $! >"$pf"
  for i in $(seq 1 80); do
    grep -q 'started \[trapper #1\]' "$d/zabbix_server.log" 2>/dev/null && break
    pid_alive "$pf" || { tail -20 "$d/zabbix_server.log" "$d/stdout.log" >&2; die "zabbix_server exited"; }
    sleep 0.25
  done
  grep -q 'started \[trapper #1\]' "$d/zabbix_server.log" || die "zabbix_server trapper did not start"
  log "zabbix_server: up, trapper on 127.0.0.1:$ZBX_TRAPPER_PORT (pid $(cat "$pf"))"
}

zabbix_start() {
  mkdir -p "$STATE"
  local t0; t0=$(now)
  zabbix_pg_start
  zabbix_db_init
  zabbix_frontend_conf
  zabbix_web_start
  zabbix_server_start
  local v; v=$(zbx_api apiinfo.version '{}' | jget 'd["result"]') || die "api not answering"
  log "zabbix start: $(elapsed "$t0") s, API version $v"
}

zabbix_stop() {
  # order matters: zabbix_server hangs in DB-reconnect loops if postgres goes first
  stop_group "$STATE/zabbix-server.pid" zabbix_server
  stop_group "$STATE/zabbix-web.pid" "zabbix web"
  if [ -f "$STATE/pg/data/PG_VERSION" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$STATE/pg/data" status >/dev/null 2>&1; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$STATE/pg/data" -m fast -w stop >/dev/null && log "postgres: stopped"
  else
    log "postgres: not running"
  fi
  rm -f "$STATE/postgres.pid"
}


case ${1:-} in
install) mkdir -p "$STATE"; zabbix_install ;;
start) mkdir -p "$STATE"; zabbix_install; zabbix_start ;;
stop) zabbix_stop ;;
env) echo "ZABBIX_URL=$ZABBIX_URL" ;;
*) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
