#!/usr/bin/env bash
# Smoke test on the oldest and newest supported Python: a fresh venv, the README's install,
# the worker import, the wire schema (it must not depend on the Python or msgspec version),
# one `pipes-bus run` on a directory bus, and the log's unit and property tests.
#
# Usage: .ci/smoke.sh [VERSION ...]   (default: 3.10 3.13, as pyenv has them)
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.13)
root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
for version in "${versions[@]}"; do
    python="$(ls -d "$root"/versions/"$version".*/bin/python 2>/dev/null | sort -V | tail -1 || true)"
    if [ -z "$python" ]; then
        echo "smoke: Python $version is not installed (pyenv install $version)" >&2
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "-- Python $("$python" -c 'import platform; print(platform.python_version())')"
    "$python" -m venv "$work/venv"
    "$work/venv/bin/pip" install -q ".[cli]" pytest pytest-timeout pytest-xdist hypothesis
    "$work/venv/bin/python" -c "import pipes_bus, msgspec; print('pipes_bus', pipes_bus.__version__, 'msgspec', msgspec.__version__)"
    "$work/venv/bin/python" docs/gen_schema.py --check
    "$work/venv/bin/pipes-bus" run -q --bus "$work/bus" -- "$work/venv/bin/python" docs/examples/hello.py
    # The installed package, not the source tree: run from elsewhere, with only the tests
    # (their shared helpers are imported as `tests.helpers`) on the path.
    mkdir "$work/src" && ln -s "$PWD/tests" "$work/src/tests"
    (cd "$work" && PYTHONPATH="$work/src" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
        --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" \
        "$OLDPWD"/tests/wire/test_chunk.py "$OLDPWD"/tests/log/test_writer.py \
        "$OLDPWD"/tests/log/test_reader.py "$OLDPWD"/tests/log/test_properties.py \
        "$OLDPWD"/tests/wire/test_schema.py)
    rm -rf "$work"
    trap - EXIT
done
