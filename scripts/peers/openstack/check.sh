#!/usr/bin/env bash
# End-to-end check of the running OpenStack peer (scripts/peers/openstack.sh start) with curl and
# python3 -c for the JSON only: for humans and debugging, not part of the test suite.
#   scripts/peers/openstack/check.sh
# Keystone password login (admin and the non-admin demo user), the catalog, Nova's servers API
# (create with "networks": "none" under "OpenStack-API-Version: compute 2.37" -> ACTIVE, soft and
# hard reboot, resize + confirm and revert, stop -> SHUTOFF, start, delete -> 404), m1.huge -> ERROR with a "No valid host"
# fault, hypervisors and all_tenants as admin (403 for the demo user), three servers created at
# once, and an application credential of the demo user used to log in. Leaves nothing behind.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
while IFS='=' read -r k v; do export "$k=$v"; done < <("$HERE/../openstack.sh" env)
[[ -n ${OPSLET_OS_IMAGE:-} ]] || { echo "the peer is not running: scripts/peers/openstack.sh start" >&2; exit 1; }
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
MV='OpenStack-API-Version: compute 2.37'
PASS=0 FAIL=0
T0=$(date +%s.%N)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

el() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%5.1f", b-a}'; }
say() { printf '[%s s] %s\n' "$(el)" "$*"; }
ok() { PASS=$((PASS + 1)); say "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); say "FAIL $*"; }
# j EXPR: evaluates EXPR on the JSON document d read from stdin
j() { python3 -c 'import json, sys; d = json.load(sys.stdin); r = eval(sys.argv[1]); print(r if not isinstance(r, (dict, list)) else json.dumps(r))' "$1"; }

# login USER PASSWORD PROJECT: prints the token; the response body goes to $TMP/USER.json
login() {
	curl -sS --max-time 30 -D "$TMP/$1.hdr" -o "$TMP/$1.json" -H 'Content-Type: application/json' \
		-d "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": {\"name\": \"$1\",
		\"domain\": {\"name\": \"$OPSLET_OS_DOMAIN\"}, \"password\": \"$2\"}}}, \"scope\": {\"project\": {\"name\": \"$3\",
		\"domain\": {\"name\": \"$OPSLET_OS_DOMAIN\"}}}}}" "$OPSLET_OS_AUTH_URL/auth/tokens"
	awk 'tolower($1) == "x-subject-token:" {print $2}' "$TMP/$1.hdr" | tr -d '\r'
}
# api TOKEN METHOD URL [BODY]: the response body; the status code goes to $TMP/code
api() {
	local t=$1 m=$2 u=$3
	shift 3
	curl -sS --max-time 60 -o "$TMP/body" -w '%{http_code}' -X "$m" -H "X-Auth-Token: $t" -H "$MV" \
		-H 'Content-Type: application/json' ${1:+-d "$1"} "$u" >"$TMP/code"
	cat "$TMP/body"
}
code() { cat "$TMP/code"; }

# create TOKEN NAME FLAVOR: prints the new server's id
create() {
	api "$1" POST "$NOVA/servers" "{\"server\": {\"name\": \"$2\", \"flavorRef\": \"$3\", \"imageRef\": \"$OPSLET_OS_IMAGE\", \"networks\": \"none\"}}" |
		j 'd["server"]["id"]' 2>/dev/null || echo "  create $2: HTTP $(code) $(cat "$TMP/body")" >&2
}
# wait_status TOKEN ID WANT [SECONDS]: until the server's status is WANT (GONE: 404)
wait_status() {
	local t=$1 id=$2 want=$3 secs=${4:-60} i s
	for ((i = 0; i < secs * 2; i++)); do
		s=$(api "$t" GET "$NOVA/servers/$id" | j 'd["server"]["status"] + ("/" + d["server"]["OS-EXT-STS:task_state"] if d["server"].get("OS-EXT-STS:task_state") else "")' 2>/dev/null || true)
		[[ $(code) == 404 ]] && s=GONE
		[[ $s == "$want" ]] && return 0
		if [[ $s == ERROR && $want != ERROR ]]; then
			echo "  server $id went to ERROR: $(api "$t" GET "$NOVA/servers/$id" | j 'd["server"].get("fault")')"
			return 1
		fi
		sleep 0.5
	done
	echo "  server $id: still $s after $secs s (wanted $want)"
	return 1
}
# expect WHAT WANT GOT
expect() { if [[ $3 == "$2" ]]; then ok "$1"; else bad "$1 (wanted $2, got $3)"; fi; }

# ---------------------------------------------------------------- Keystone
ADMIN=$(login "$OPSLET_OS_ADMIN_USER" "$OPSLET_OS_ADMIN_PASSWORD" "$OPSLET_OS_ADMIN_PROJECT")
[[ -n $ADMIN ]] && ok "admin token (POST /v3/auth/tokens, password, project $OPSLET_OS_ADMIN_PROJECT): ${ADMIN:0:12}... expires $(j 'd["token"]["expires_at"]' <"$TMP/admin.json")" ||
	{ bad "admin token: $(cat "$TMP/admin.json")"; exit 1; }
say "     catalog: $(j '", ".join("%s=%s" % (s["type"], [e["url"] for e in s["endpoints"] if e["interface"] == "public"][0]) for s in d["token"]["catalog"])' <"$TMP/admin.json")"
NOVA=$(j '[e["url"] for s in d["token"]["catalog"] if s["type"] == "compute" for e in s["endpoints"] if e["interface"] == "public" and e["region_id"] == "'"$OPSLET_OS_REGION"'"][0]' <"$TMP/admin.json")
GLANCE=$(j '[e["url"] for s in d["token"]["catalog"] if s["type"] == "image" for e in s["endpoints"] if e["interface"] == "public"][0]' <"$TMP/admin.json")
expect "catalog has compute, image, placement, network, identity" "compute identity image network placement" \
	"$(j '" ".join(sorted(s["type"] for s in d["token"]["catalog"]))' <"$TMP/admin.json")"
expect "roles of admin" "admin member reader" "$(j '" ".join(sorted(r["name"] for r in d["token"]["roles"]))' <"$TMP/admin.json" | sed 's/ manager//')"

# servers an interrupted run left behind
for id in $(api "$ADMIN" GET "$NOVA/servers?all_tenants=1&name=^check-" | j '" ".join(s["id"] for s in d["servers"])'); do
	api "$ADMIN" DELETE "$NOVA/servers/$id" >/dev/null
	wait_status "$ADMIN" "$id" GONE && say "     deleted $id, left by an earlier run"
done

# ---------------------------------------------------------------- Glance, Nova basics
expect "GET $GLANCE/v2/images?name=tiny: the image env names" "$OPSLET_OS_IMAGE active public 1048576" \
	"$(api "$ADMIN" GET "$GLANCE/v2/images?name=tiny" | j '" ".join(str(x) for i in d["images"] for x in (i["id"], i["status"], i["visibility"], i["size"]))')"
expect "GET /v2.1/flavors/$OPSLET_OS_FLAVOR" "m1.tiny 512 1 1" "$(api "$ADMIN" GET "$NOVA/flavors/$OPSLET_OS_FLAVOR" | j '"%s %s %s %s" % (d["flavor"]["name"], d["flavor"]["ram"], d["flavor"]["disk"], d["flavor"]["vcpus"])')"
n=$(api "$ADMIN" GET "$NOVA/servers" | j 'len(d["servers"])')
expect "GET /v2.1/servers (admin: $n servers of its own)" 200 "$(code)"

# ---------------------------------------------------------------- a server's life cycle
SID=$(create "$ADMIN" check-life "$OPSLET_OS_FLAVOR")
expect "POST /v2.1/servers (m1.tiny, image tiny, networks none) -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE && ok "  $SID ACTIVE" || bad "  $SID not ACTIVE"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"reboot": {"type": "SOFT"}}' >/dev/null
expect "reboot SOFT -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE && ok "  ACTIVE again" || bad "  not ACTIVE after reboot"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"reboot": {"type": "HARD"}}' >/dev/null
expect "reboot HARD -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE && ok "  ACTIVE again" || bad "  not ACTIVE after hard reboot"
# resize needs a second flavor (made here, removed at the end) and allow_resize_to_same_host
api "$ADMIN" DELETE "$NOVA/flavors/check-resize" >/dev/null
api "$ADMIN" POST "$NOVA/flavors" '{"flavor": {"name": "check-resize", "id": "check-resize", "ram": 1024, "vcpus": 1, "disk": 1}}' >/dev/null
expect "POST /v2.1/flavors check-resize (admin) -> 200" 200 "$(code)"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"resize": {"flavorRef": "check-resize"}}' >/dev/null
expect "resize to check-resize -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" VERIFY_RESIZE && ok "  VERIFY_RESIZE" || bad "  not VERIFY_RESIZE"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"confirmResize": null}' >/dev/null
expect "confirmResize -> 204" 204 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE || bad "  not ACTIVE after confirm"
expect "  ACTIVE on flavor check-resize" check-resize "$(api "$ADMIN" GET "$NOVA/servers/$SID" | j 'd["server"]["flavor"]["id"]')"
api "$ADMIN" POST "$NOVA/servers/$SID/action" "{\"resize\": {\"flavorRef\": \"$OPSLET_OS_FLAVOR\"}}" >/dev/null
wait_status "$ADMIN" "$SID" VERIFY_RESIZE && ok "resize to $OPSLET_OS_FLAVOR -> VERIFY_RESIZE" || bad "resize to $OPSLET_OS_FLAVOR: not VERIFY_RESIZE"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"revertResize": null}' >/dev/null
expect "revertResize -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE || bad "  not ACTIVE after revert"
expect "  ACTIVE, back on flavor check-resize" check-resize "$(api "$ADMIN" GET "$NOVA/servers/$SID" | j 'd["server"]["flavor"]["id"]')"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"os-stop": null}' >/dev/null
expect "os-stop -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" SHUTOFF && ok "  SHUTOFF (power_state $(api "$ADMIN" GET "$NOVA/servers/$SID" | j 'd["server"]["OS-EXT-STS:power_state"]'))" || bad "  not SHUTOFF"
api "$ADMIN" POST "$NOVA/servers/$SID/action" '{"os-start": null}' >/dev/null
expect "os-start -> 202" 202 "$(code)"
wait_status "$ADMIN" "$SID" ACTIVE && ok "  ACTIVE" || bad "  not ACTIVE after start"
api "$ADMIN" DELETE "$NOVA/servers/$SID" >/dev/null
expect "DELETE /v2.1/servers/ID -> 204" 204 "$(code)"
wait_status "$ADMIN" "$SID" GONE && ok "  gone (404)" || bad "  still there"

# ---------------------------------------------------------------- no valid host
HID=$(create "$ADMIN" check-huge "$OPSLET_OS_HUGE_FLAVOR")
expect "POST /v2.1/servers with $OPSLET_OS_HUGE_FLAVOR -> 202" 202 "$(code)"
if wait_status "$ADMIN" "$HID" ERROR; then
	fault=$(api "$ADMIN" GET "$NOVA/servers/$HID" | j '"code %s, message %r" % (d["server"]["fault"]["code"], d["server"]["fault"]["message"])')
	[[ $fault == *"No valid host"* ]] && ok "  ERROR with fault $fault" || bad "  ERROR, but fault $fault"
else
	bad "  $HID did not go to ERROR"
fi
api "$ADMIN" DELETE "$NOVA/servers/$HID" >/dev/null
wait_status "$ADMIN" "$HID" GONE && ok "  deleted the ERROR server" || bad "  ERROR server not deleted"

# ---------------------------------------------------------------- the demo user (member, not admin)
DEMO=$(login "$OPSLET_OS_DEMO_USER" "$OPSLET_OS_DEMO_PASSWORD" "$OPSLET_OS_DEMO_PROJECT")
[[ -n $DEMO ]] && ok "demo token ($OPSLET_OS_DEMO_USER, project $OPSLET_OS_DEMO_PROJECT, roles $(j '" ".join(sorted(r["name"] for r in d["token"]["roles"]))' <"$TMP/$OPSLET_OS_DEMO_USER.json"))" ||
	bad "demo token: $(cat "$TMP/$OPSLET_OS_DEMO_USER.json")"
DEMO_UID=$(j 'd["token"]["user"]["id"]' <"$TMP/$OPSLET_OS_DEMO_USER.json")
DEMO_PID=$(j 'd["token"]["project"]["id"]' <"$TMP/$OPSLET_OS_DEMO_USER.json")
DID=$(create "$DEMO" check-demo "$OPSLET_OS_FLAVOR")
expect "demo creates a server -> 202" 202 "$(code)"
wait_status "$DEMO" "$DID" ACTIVE && ok "  ACTIVE" || bad "  demo server not ACTIVE"
api "$DEMO" GET "$NOVA/os-hypervisors/detail" >/dev/null
expect "demo GET /v2.1/os-hypervisors/detail -> 403 (admin only)" 403 "$(code)"

# ---------------------------------------------------------------- admin views
hv=$(api "$ADMIN" GET "$NOVA/os-hypervisors/detail")
expect "admin GET /v2.1/os-hypervisors/detail -> 200" 200 "$(code)"
say "     $(echo "$hv" | j '"; ".join("%s %s/%s type %s, %s" % (h["hypervisor_hostname"], h["status"], h["state"], h.get("hypervisor_type"), h.get("service", {}).get("host")) for h in d["hypervisors"])')"
all=$(api "$ADMIN" GET "$NOVA/servers/detail?all_tenants=1")
expect "admin GET /v2.1/servers/detail?all_tenants=1 shows the demo server in project $OPSLET_OS_DEMO_PROJECT" "$DEMO_PID" \
	"$(echo "$all" | j '[s["tenant_id"] for s in d["servers"] if s["id"] == "'"$DID"'"][0]')"
api "$DEMO" GET "$NOVA/servers/detail?all_tenants=1" >/dev/null
expect "demo GET /v2.1/servers/detail?all_tenants=1 -> 403 (admin only)" 403 "$(code)"

# ---------------------------------------------------------------- application credential
ac=$(api "$DEMO" POST "$OPSLET_OS_AUTH_URL/users/$DEMO_UID/application_credentials" \
	"{\"application_credential\": {\"name\": \"opslet-check-$$\", \"description\": \"check.sh\"}}")
expect "demo POST /v3/users/{id}/application_credentials -> 201" 201 "$(code)"
AC_ID=$(echo "$ac" | j 'd["application_credential"]["id"]')
AC_SECRET=$(echo "$ac" | j 'd["application_credential"]["secret"]')
curl -sS --max-time 30 -D "$TMP/ac.hdr" -o "$TMP/ac.json" -H 'Content-Type: application/json' -d "{\"auth\": {\"identity\": {
	\"methods\": [\"application_credential\"], \"application_credential\": {\"id\": \"$AC_ID\", \"secret\": \"$AC_SECRET\"}}}}" \
	"$OPSLET_OS_AUTH_URL/auth/tokens"
ACT=$(awk 'tolower($1) == "x-subject-token:" {print $2}' "$TMP/ac.hdr" | tr -d '\r')
[[ -n $ACT ]] && ok "  token with method application_credential (project $(j 'd["token"]["project"]["name"]' <"$TMP/ac.json"), methods $(j 'd["token"]["methods"]' <"$TMP/ac.json"))" ||
	bad "  application credential login: $(cat "$TMP/ac.json")"
expect "  that token lists the demo server" True "$(api "$ACT" GET "$NOVA/servers" | j '"'"$DID"'" in [s["id"] for s in d["servers"]]')"
api "$DEMO" DELETE "$OPSLET_OS_AUTH_URL/users/$DEMO_UID/application_credentials/$AC_ID" >/dev/null
expect "  DELETE the application credential -> 204" 204 "$(code)"

# ---------------------------------------------------------------- several at once
ids=()
for i in 1 2 3; do ids+=("$(create "$DEMO" "check-par-$i" "$OPSLET_OS_FLAVOR")"); done
good=0
for id in "${ids[@]}"; do wait_status "$DEMO" "$id" ACTIVE && good=$((good + 1)); done
expect "three servers created back to back are ACTIVE" 3 "$good"
for id in "${ids[@]}" "$DID"; do api "$DEMO" DELETE "$NOVA/servers/$id" >/dev/null; done
good=0
for id in "${ids[@]}" "$DID"; do wait_status "$DEMO" "$id" GONE && good=$((good + 1)); done
expect "and deleted (with the demo server)" 4 "$good"

api "$ADMIN" DELETE "$NOVA/flavors/check-resize" >/dev/null
expect "DELETE the flavor check-resize -> 202" 202 "$(code)"

echo "check: $PASS passed, $FAIL failed ($(el) s)"
[[ $FAIL -eq 0 ]]
