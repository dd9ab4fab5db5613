#!/usr/bin/env bash
# Builds target/debian/wscast_<version>_amd64.deb and its -dbgsym package with cargo-deb.
# Extra arguments go to cargo deb (e.g. --deb-version 0.1.0+ci2 for an upgrade test).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version '^3.8'
mkdir -p target/man
gzip -9n < packaging/wscast.8 > target/man/wscast.8.gz
cargo deb --locked --dbgsym "$@"
