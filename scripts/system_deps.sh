#!/usr/bin/env bash
# Debian packages d2lport needs beside the venv: Graphviz' `dot` (architecture pictures in
# the chapters) and Chromium (the book's browser test, make test-book; Playwright drives
# this one and downloads none).  Installs them when run as root with apt; otherwise says
# what to do.
set -u
missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null && exit 0
fi
echo "d2lport: missing ${missing[*]}: install it (as root: apt-get install -y ${missing[*]};" \
     "macOS: brew install graphviz chromium); the chapters' pictures need Graphviz' dot," \
     "the book's browser test Chromium" >&2
exit 1
