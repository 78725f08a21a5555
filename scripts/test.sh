#!/usr/bin/env bash
# Runs Bulkhead's whole test suite: formatting, lints, and every crate's
# tests against real PostgreSQL and Redis servers.
#
# The servers are found, else started, else installed (root with apt-get):
#   BULKHEAD_TEST_POSTGRES  superuser URL   (default postgres://postgres@127.0.0.1:5432/postgres)
#   BULKHEAD_TEST_REDIS     URL             (default redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."

export BULKHEAD_TEST_POSTGRES="${BULKHEAD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
export BULKHEAD_TEST_REDIS="${BULKHEAD_TEST_REDIS:-redis://127.0.0.1:6379}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True when something accepts TCP connections at host $1, port $2.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # host port what
    for _ in $(seq 1 60); do listening "$1" "$2" && return 0; sleep 0.5; done
    die "$3 did not come up on $1:$2"
}

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_install() {
    can_install || die "$* is missing and cannot be installed here (needs root and apt-get); install it or point the BULKHEAD_TEST_* variables at a running server"
    say "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Sets host and port from URL $1 (scheme://[user@]host[:port][/...]),
# port $2 when it names none.
host_port() {
    local hostport="${1#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
    host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=$2
    return 0
}

ensure_postgres() {
    local host port
    host_port "$BULKHEAD_TEST_POSTGRES" 5432
    if listening "$host" "$port"; then say "PostgreSQL is up on $host:$port"; return; fi
    if [ "$host" != 127.0.0.1 ] && [ "$host" != localhost ]; then die "PostgreSQL at $host:$port does not answer"; fi
    local fresh=0
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
        fresh=1
    fi
    local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
    if [ "$fresh" = 1 ]; then
        # A fresh Debian cluster asks for passwords over TCP; tests connect
        # as postgres without one, as on the CI machines.
        sed -ri 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "/etc/postgresql/$version/main/pg_hba.conf"
    fi
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for "$host" "$port" PostgreSQL
}

ensure_redis() {
    local host port
    host_port "$BULKHEAD_TEST_REDIS" 6379
    if listening "$host" "$port"; then say "Redis is up on $host:$port"; return; fi
    if [ "$host" != 127.0.0.1 ] && [ "$host" != localhost ]; then die "Redis at $host:$port does not answer"; fi
    command -v redis-server >/dev/null || apt_install redis-server
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for "$host" "$port" Redis
}

ensure_postgres
# The rate limiter's tests share limits through Redis (crates/meter).
ensure_redis
# The end-to-end tests drive the API with curl as well as with the CLI,
# check realm tokens with an independent verifier (PyJWT), the OpenAPI
# document with a standard validator, and the live API with a
# property-based tester (schemathesis), and the gateway's WebSocket proxying
# with a real WebSocket peer (websockets); the tenant-database example
# application runs on psycopg; the MCP endpoint is driven by the official
# MCP SDK, as client and as the tools' servers (mcp).
command -v curl >/dev/null || apt_install curl
# Backups are age files: a test decrypts one with the standard age tool.
command -v age >/dev/null || apt_install age
# A silo tenant's backup runs pg_dump (and the test reads it with
# pg_restore): the server's client tools.
command -v pg_dump >/dev/null || apt_install postgresql-client
PYTHON_TOOLS=('pyjwt[crypto]>=2.8,<3' 'openapi-spec-validator>=0.7,<1' 'schemathesis>=4,<5' 'websockets>=14,<16' 'psycopg[binary]>=3.1,<4' 'mcp>=1.30,<2' 'moto[server]>=5,<6')
# moto: an S3-compatible server (real HTTP, multipart uploads) the backup
# tests start on ports of their own.
if ! python3 -c 'import jwt, cryptography, openapi_spec_validator, schemathesis, websockets, psycopg, mcp, moto.server' 2>/dev/null; then
    say "installing ${PYTHON_TOOLS[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}" \
        || die "cannot install the Python test tools; run: python3 -m pip install ${PYTHON_TOOLS[*]}"
fi

# The gateway's /metrics must pass `promtool check metrics`. Only promtool
# is taken from Debian's prometheus package: installing the package would
# start a Prometheus server.
if ! command -v promtool >/dev/null; then
    can_install || die "promtool is missing; install it (Debian: the prometheus package) or put it on PATH"
    say "installing promtool (from Debian's prometheus package)"
    apt-get update -qq
    unpacked=$(mktemp -d) && chmod 777 "$unpacked"  # apt downloads as _apt
    (cd "$unpacked" && apt-get download -qq prometheus && dpkg-deb -x prometheus_*.deb .) \
        || die "cannot fetch Debian's prometheus package for promtool"
    install -m 755 "$unpacked/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$unpacked"
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked --no-fail-fast

say "all tests passed"
