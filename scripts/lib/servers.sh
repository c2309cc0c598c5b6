# The S3 and Azure Blob servers the test suite and the benchmark run against,
# installed at pinned versions under target/tools/ and started on 127.0.0.1.
# Source it (after pg.sh, for apt_install and free_port); it defines functions only.
#
#   ensure_moto / ensure_azurite      install if missing
#   start_moto DIR / start_azurite DIR
#       start on a free port, logs in DIR, wait until it answers, and export
#       BACKUP_TEST_S3_ENDPOINT / BACKUP_TEST_AZURE_ENDPOINT for the tests
#   stop_test_servers                 stop what start_* started

MOTO_VERSION=5.2.5
AZURITE_VERSION=3.35.0
AIOSMTPD_VERSION=1.4.6
TOOLS_DIR=${TOOLS_DIR:-$PWD/target/tools}
MOTO_VENV=$TOOLS_DIR/moto-$MOTO_VERSION
AZURITE_DIR=$TOOLS_DIR/azurite-$AZURITE_VERSION
AIOSMTPD_VENV=$TOOLS_DIR/aiosmtpd-$AIOSMTPD_VERSION
_TEST_SERVER_PIDS=()

ensure_moto() {
    if [ -x "$MOTO_VENV/bin/moto_server" ]; then return; fi
    echo "installing moto[server]==$MOTO_VERSION (the S3 server for tests) into $MOTO_VENV..."
    _pip_venv "$MOTO_VENV" "moto[server]==$MOTO_VERSION"
}

# aiosmtpd, the SMTP server tests/it/notifiers.rs sends mail to
# (tests/it/receivers/smtp.py); exports the Python that has it.
ensure_aiosmtpd() {
    if [ ! -x "$AIOSMTPD_VENV/bin/python" ] || ! "$AIOSMTPD_VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
        echo "installing aiosmtpd==$AIOSMTPD_VERSION (the SMTP server for tests) into $AIOSMTPD_VENV..."
        _pip_venv "$AIOSMTPD_VENV" "aiosmtpd==$AIOSMTPD_VERSION"
    fi
    export BACKUP_TEST_SMTPD_PYTHON="$AIOSMTPD_VENV/bin/python"
}

# _pip_venv DIR REQUIREMENT: a new Python virtual environment in DIR with
# REQUIREMENT installed (Debian's python3-venv first, if missing).
_pip_venv() {
    command -v python3 >/dev/null || apt_install python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    rm -rf "$1"
    python3 -m venv "$1"
    "$1/bin/pip" install --quiet --disable-pip-version-check "$2"
}

ensure_azurite() {
    if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then return; fi
    echo "installing azurite@$AZURITE_VERSION (the Azure Blob server for tests) into $AZURITE_DIR..."
    command -v npm >/dev/null || apt_install nodejs npm
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
}

# _wait_http NAME URL LOG: until anything answers on URL (any HTTP status).
_wait_http() {
    local name=$1 url=$2 log=$3 i
    command -v curl >/dev/null || apt_install curl ca-certificates
    for i in $(seq 1 100); do
        if curl -s -o /dev/null "$url"; then return 0; fi
        sleep 0.2
    done
    echo "error: $name did not start; its log ($log):" >&2
    tail -n 30 "$log" >&2
    return 1
}

start_moto() {
    local dir=$1 port
    mkdir -p "$dir"
    port=$(free_port)
    "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    _TEST_SERVER_PIDS+=($!)
    _wait_http moto "http://127.0.0.1:$port/" "$dir/moto.log"
    export BACKUP_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
}

start_azurite() {
    local dir=$1 port
    mkdir -p "$dir/azurite"
    port=$(free_port)
    # --skipApiVersionCheck: the official SDK sends an API version newer than
    # Azurite knows. --disableTelemetry: no outbound calls.
    "$AZURITE_DIR/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
        --location "$dir/azurite" --disableTelemetry --skipApiVersionCheck --silent \
        >"$dir/azurite.log" 2>&1 &
    _TEST_SERVER_PIDS+=($!)
    _wait_http azurite "http://127.0.0.1:$port/devstoreaccount1" "$dir/azurite.log"
    # No trailing '/': the SDK appends paths to it.
    export BACKUP_TEST_AZURE_ENDPOINT="http://127.0.0.1:$port/devstoreaccount1"
}

stop_test_servers() {
    local pid
    for pid in "${_TEST_SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${_TEST_SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    _TEST_SERVER_PIDS=()
}

# azurite_create_container CONTAINER: creates a container on the Azurite that
# start_azurite started, with an account SAS signed from the well-known key.
azurite_create_container() {
    local container=$1 account=devstoreaccount1 version=2022-11-02 st se sig hexkey
    local key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    st=$(date -u -d '-5 min' +%Y-%m-%dT%H:%M:%SZ)
    se=$(date -u -d '+2 hours' +%Y-%m-%dT%H:%M:%SZ)
    hexkey=$(printf '%s' "$key" | base64 -d | od -An -tx1 | tr -d ' \n')
    sig=$(printf '%s\nrwdlac\nb\nco\n%s\n%s\n\nhttps,http\n%s\n\n' "$account" "$st" "$se" "$version" \
        | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64 | sed 's/+/%2B/g; s/\//%2F/g; s/=/%3D/g')
    curl -sf -X PUT -H "x-ms-version: $version" -H "Content-Length: 0" \
        "$BACKUP_TEST_AZURE_ENDPOINT/$container?restype=container&sv=$version&ss=b&srt=co&sp=rwdlac&st=$st&se=$se&spr=https,http&sig=$sig" \
        >/dev/null
}
