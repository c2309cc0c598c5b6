# Shared by scripts/test, scripts/demo and scripts/bench: install what is
# missing on a fresh Debian machine, and start or stop a throwaway PostgreSQL
# cluster in a directory of its own. Source it; it defines functions only.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    if [ -z "${_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A C compiler for zstd-sys; cargo itself is assumed (README).
ensure_build_tools() {
    command -v cargo >/dev/null || { echo "error: cargo not found; install a Rust toolchain (rustup)" >&2; exit 1; }
    command -v cc >/dev/null || apt_install build-essential
}

# promtool, which the tests run on what /metrics serves and on the alert rules
# (Debian's prometheus package; its server is not started here).
ensure_promtool() {
    if command -v promtool >/dev/null || [ -x /usr/bin/promtool ]; then return; fi
    echo "installing promtool (Debian package prometheus)..."
    apt_install prometheus
}

# Headless Chromium, which tests/it/status_page.rs renders the status page
# with (a screenshot, and the DOM it built).
ensure_chromium() {
    if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then return; fi
    echo "installing headless Chromium (Debian package chromium)..."
    apt_install chromium
}

# The PostgreSQL server and client programs, from Debian's packages. Sets PG_BINDIR
# to the newest installed server's bin directory.
ensure_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "installing the PostgreSQL server (Debian packages postgresql, postgresql-contrib)..."
        # Our clusters are throwaway ones of our own: no need for Debian's default one.
        if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
            as_root mkdir -p /etc/postgresql-common
            echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
        fi
        apt_install postgresql postgresql-contrib
    fi
    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    export PG_BINDIR
    # PostgreSQL refuses to run as root; Debian's package creates this user.
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# PostGIS for the newest installed server (Shiojiri's fixture needs it), from
# Debian's postgresql-MAJOR-postgis-3. Call after ensure_postgres.
ensure_postgis() {
    local major
    major=$(basename "$(dirname "$PG_BINDIR")")
    if [ ! -e "/usr/share/postgresql/$major/extension/postgis.control" ]; then
        echo "installing PostGIS (Debian package postgresql-$major-postgis-3)..."
        apt_install "postgresql-$major-postgis-3"
    fi
}

# Runs a server program, as the postgres user when we are root.
pg_server() {
    local program=$1; shift
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$PG_BINDIR/$program" "$@"
    else
        "$PG_BINDIR/$program" "$@"
    fi
}

free_port() {
    local port
    while :; do
        port=$(( 20000 + RANDOM % 40000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# pg_start_cluster DIR: initdb in DIR/data, start on a free port of 127.0.0.1
# with trust authentication, socket in DIR. Exports PGHOST, PGPORT, PGUSER.
pg_start_cluster() {
    local dir=$1
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        # mktemp -d makes 0700 directories: the server user must pass through.
        chmod a+x "$(dirname "$dir")"
    fi
    pg_server initdb -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    PGPORT=$(free_port)
    pg_server pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $PGPORT -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
        || { cat "$dir/server.log" >&2; return 1; }
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
}

pg_stop_cluster() {
    local dir=$1
    [ -d "$dir/data" ] && pg_server pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
