#!/usr/bin/env bash
# Make Fashion-MNIST available for d2lport; called by `make data`.
# Usage: scripts/get_data.sh [PYTHON]   (default: $PYTHON, else python3)
# Order: already there -> apt package (root only) -> download -> explain and exit 1.
set -u
PY="${1:-${PYTHON:-python3}}"
PKG=dataset-fashion-mnist
MOD=d2lport.data.fashion_mnist
cd "$(dirname "$0")/.." || exit 1   # so `-m d2lport...` finds this checkout

check() {   # prints the status report; succeeds only if all four files verify
    report=$("$PY" -m "$MOD" --status 2>&1)
}

if check; then
    echo "$report"
    exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Fashion-MNIST not found or not valid; installing Debian package $PKG ..."
    # Refresh the package lists only when apt does not know the package yet.
    if ! apt-cache show "$PKG" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    if DEBIAN_FRONTEND=noninteractive apt-get install -y "$PKG" && check; then
        echo "$report"
        exit 0
    fi
fi

echo "Trying to download Fashion-MNIST into the user cache ..."
if "$PY" -m "$MOD" --download && check; then
    echo "$report"
    exit 0
fi

check
cat >&2 <<MSG
$report

Could not make Fashion-MNIST available. Do one of:
  - as root:  apt-get install -y $PKG      (then run \`make data\` again)
  - copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz
    and t10k-labels-idx1-ubyte.gz into a directory and export D2LPORT_DATA=that/dir
  - when online:  $PY -m $MOD --download
MSG
exit 1
