# Sourced by the peer scripts: root for apt (directly, or through sudo), installing Debian
# packages that are missing, waiting for the dpkg lock (other jobs may be running apt) and
# retrying, and Python venvs with pinned PyPI packages. The sourcing script defines log().

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "needs root: $*"; return 1; fi; }

# apt_install PKG...: installs those of PKG that are not installed yet.
apt_install() {
	local missing=() p i
	for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	log "installing ${missing[*]}"
	if ! apt-cache policy "${missing[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		for i in 1 2 3 4 5; do as_root apt-get update -qq && break; sleep 10; done
	fi
	for i in 1 2 3; do
		as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null && return 0
		log "apt-get install failed (try $i)"; sleep 10
	done
	return 1
}

# venv_pinned VENV CHECK SPEC...: a venv at VENV holding exactly SPEC (pip, pinned; recorded in
# VENV/.opslet-spec), in which the Python code CHECK (may be empty) runs. Does nothing when it is
# there already.
venv_pinned() {
	local venv=$1 check=$2
	shift 2
	if [[ -x $venv/bin/python && $(cat "$venv/.opslet-spec" 2>/dev/null) == "$*" ]] &&
		{ [[ -z $check ]] || "$venv/bin/python" -c "$check" 2>/dev/null; }; then
		log "$(basename "$venv") up to date ($venv)"
		return 0
	fi
	log "installing $* into $venv"
	mkdir -p "$(dirname "$venv")"
	[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check "$@"
	[[ -z $check ]] || "$venv/bin/python" -c "$check"
	echo "$*" >"$venv/.opslet-spec"
}

# test_tls DIR: DIR/ca.crt (a CA of its own, what clients trust), DIR/tls.crt and DIR/tls.key (a
# server certificate for IP:127.0.0.1 signed by that CA), for test servers on loopback.
test_tls() {
	local dir=$1
	mkdir -p "$dir"
	{
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
			-keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=opslet test CA" &&
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
				-keyout "$dir/tls.key" -out "$dir/tls.csr" -subj /CN=127.0.0.1 &&
			printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/tls.ext" &&
			openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
				-days 3650 -extfile "$dir/tls.ext" -out "$dir/tls.crt"
	} >/dev/null 2>&1 || { log "openssl failed"; exit 1; }
}
