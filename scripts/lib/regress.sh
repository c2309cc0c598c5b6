# PostgreSQL's own regression suite, for tests/it/regression.rs: it builds the
# `regression` database that the test backs up and restores. Source it (after
# pg.sh and servers.sh, for apt_install, PG_BINDIR and TOOLS_DIR); it defines
# functions only.
#
#   ensure_regress    install what is missing, then export BACKUP_TEST_REGRESS_DIR
#
# What it puts in $TOOLS_DIR/regress-<Debian version of the server>/:
#   src/test/regress/   the regression SQL, expected output, data and schedules,
#                       from Debian's source package of the installed server
#   lib/regress.so      the C functions the suite loads, built from regress.c,
#                       beside contrib's autoinc.so and refint.so (postgresql-contrib)
#   pg_regress          a link to the driver (Debian ships it in postgresql-client-N)
#   SOURCE              which source version was fetched, and its SHA-256
#
# The sources are pinned to the installed server's exact Debian version. The
# machine's apt sources have no deb-src lines, so a private apt configuration
# (its own source list, lists and cache under the work directory; the system's
# are untouched) adds them for the repositories the server package comes from,
# and `apt-get source` fetches the package: apt checks every file's SHA-256
# against the archive's signed index. Only when that version cannot be fetched
# (a point release replaced it, or a mirror lacks the security pool) is the
# newest source of the same major that can be taken instead, and said so.

REGRESS_WORK=${REGRESS_WORK:-$TOOLS_DIR/regress-work}

ensure_regress() {
    local major version dir
    major=$(basename "$(dirname "$PG_BINDIR")")
    version=$(dpkg-query -W -f='${Version}' "postgresql-$major" 2>/dev/null) || {
        echo "error: the Debian package postgresql-$major is not installed; ensure_regress needs the server from Debian's packages" >&2
        return 1
    }
    dir=$TOOLS_DIR/regress-$version
    # The headers and PGXS, to build regress.so for this server.
    if [ ! -e "$("$PG_BINDIR/pg_config" --includedir-server)/postgres.h" ]; then
        echo "installing postgresql-server-dev-$major (to build the regression suite's regress.so)..."
        apt_install "postgresql-server-dev-$major=$version" 2>/dev/null \
            || apt_install "postgresql-server-dev-$major"
    fi
    if [ ! -e "$dir/SOURCE" ]; then
        _fetch_regress_sources "$major" "$version" "$dir"
    fi
    # The triggers test loads contrib's spi modules from the same directory.
    local lib
    for lib in autoinc refint; do
        [ -e "$dir/lib/$lib.so" ] || cp "$("$PG_BINDIR/pg_config" --pkglibdir)/$lib.so" "$dir/lib/"
    done
    export BACKUP_TEST_REGRESS_DIR=$dir
}

# _regress_apt apt-get|apt-cache ARGS...: with the private configuration of $REGRESS_WORK.
_regress_apt() {
    local tool=$1; shift
    "$tool" -q \
        -o Dir::Etc::SourceList="$REGRESS_WORK/sources.list" \
        -o Dir::Etc::SourceParts="$REGRESS_WORK/sources.list.d" \
        -o Dir::State::Lists="$REGRESS_WORK/lists" \
        -o Dir::Cache="$REGRESS_WORK/cache" \
        -o APT::Sandbox::User=root \
        "$@"
}

# _regress_sources MAJOR: deb-src lines for the repositories apt installs
# postgresql-MAJOR from, as the machine's own sources name them.
_regress_sources() {
    apt-cache madison "postgresql-$1" \
        | awk -F'|' '$3 ~ / Packages$/ { split($3, f, " "); split(f[2], s, "/"); print "deb-src " f[1] " " s[1] " " s[2] }' \
        | sort -u
}

_fetch_regress_sources() {
    local major=$1 version=$2 dir=$3 fetched orig top
    command -v cc >/dev/null && command -v make >/dev/null || apt_install build-essential
    command -v bzip2 >/dev/null || apt_install bzip2
    echo "fetching the regression suite of PostgreSQL $version (Debian source package postgresql-$major)..."
    rm -rf "$REGRESS_WORK"
    mkdir -p "$REGRESS_WORK/sources.list.d" "$REGRESS_WORK/lists/partial" \
        "$REGRESS_WORK/cache/archives/partial" "$REGRESS_WORK/src"
    _regress_sources "$major" >"$REGRESS_WORK/sources.list"
    if [ ! -s "$REGRESS_WORK/sources.list" ] && [ -z "${_APT_UPDATED:-}" ]; then
        # A machine whose package lists were cleared: apt knows no repository yet.
        as_root apt-get update -qq
        _APT_UPDATED=1
        _regress_sources "$major" >"$REGRESS_WORK/sources.list"
    fi
    if [ ! -s "$REGRESS_WORK/sources.list" ]; then
        echo "error: apt knows no repository that has postgresql-$major" >&2
        return 1
    fi
    _regress_apt apt-get update -qq >/dev/null
    # The installed version first, then the others the archive lists, newest
    # first: a mirror may lack a pool (security updates) that it lists.
    for fetched in "$version" $(_regress_apt apt-cache showsrc "postgresql-$major" 2>/dev/null \
        | awk '/^Version:/ { print $2 }' | sort -Vru); do
        if (cd "$REGRESS_WORK/src" && _regress_apt apt-get source --download-only "postgresql-$major=$fetched" >"$REGRESS_WORK/fetch.log" 2>&1); then
            break
        fi
        rm -f "$REGRESS_WORK"/src/*
        fetched=
    done
    if [ -z "$fetched" ]; then
        echo "error: no source of postgresql-$major could be fetched from $(tr '\n' ';' <"$REGRESS_WORK/sources.list")" >&2
        cat "$REGRESS_WORK/fetch.log" >&2
        return 1
    fi
    if [ "$fetched" != "$version" ]; then
        echo "note: the source of $version cannot be fetched; took $fetched, the newest of PostgreSQL $major that can"
    fi
    orig=$(ls "$REGRESS_WORK"/src/postgresql-"$major"_*.orig.tar.*)
    # sed reads the whole listing: `head` would close the pipe on tar, whose
    # SIGPIPE (exit 141) stops the script under pipefail.
    top=$(tar -tf "$orig" | sed -n '1s|/.*||p')
    rm -rf "$dir"
    mkdir -p "$dir/lib"
    tar -xf "$orig" -C "$dir" --strip-components=1 "$top/src/test/regress"
    # PGXS, without the LLVM bitcode a JIT build would add (clang not needed).
    printf 'MODULES = regress\nPG_CONFIG = %s\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' \
        "$PG_BINDIR/pg_config" >"$dir/src/test/regress/regress.mk"
    make -s -C "$dir/src/test/regress" -f regress.mk with_llvm=no >"$REGRESS_WORK/build.log" 2>&1 \
        || { cat "$REGRESS_WORK/build.log" >&2; return 1; }
    mv "$dir/src/test/regress/regress.so" "$dir/lib/regress.so"
    ln -sf "/usr/lib/postgresql/$major/lib/pgxs/src/test/regress/pg_regress" "$dir/pg_regress"
    printf '%s %s\n' "$fetched" "$(sha256sum "$orig" | cut -d' ' -f1)" >"$dir/SOURCE"
    rm -rf "$REGRESS_WORK"
}
