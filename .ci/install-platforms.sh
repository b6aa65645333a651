#!/usr/bin/env bash
# Install the launch platforms that pipes_bus.testing.platforms starts for the launcher tests:
# Docker Engine, Podman (runc), Slurm with munge from Debian's packages; with --ray and/or
# --torch also Ray (ray[default], ~380 MB) and PyTorch 2.13.0 (CPU) into $PYTHON's pip.
# No daemon is started or enabled here: the tests start private ones (see .ci/PLATFORMS.md).
#
# Usage: .ci/install-platforms.sh [--ray] [--torch] [--no-apt]   (idempotent, quiet; root)
set -euo pipefail

python="${PYTHON:-python}"
ray_spec="${RAY_SPEC:-ray[default]==2.60.0}"
apt_packages=(docker.io podman runc catatonit slurm-wlm munge)
want_apt=1 want_ray=0 want_torch=0
for arg in "$@"; do
    case "$arg" in
        --ray) want_ray=1 ;;
        --torch) want_torch=1 ;;
        --no-apt) want_apt=0 ;;
        -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "install-platforms: unknown option $arg" >&2; exit 2 ;;
    esac
done

step() { # step NAME COMMAND...: run quietly, print how long it took, show the log on failure
    local name="$1" log start rc=0
    shift
    log="$(mktemp /tmp/install-platforms.XXXXXX)"
    start=$(date +%s%N)
    "$@" >"$log" 2>&1 || rc=$?
    local tenths=$((($(date +%s%N) - start) / 100000000))
    printf 'install-platforms: %-34s %4d.%d s%s\n' "$name" $((tenths / 10)) $((tenths % 10)) \
        "$([ $rc = 0 ] || echo "  FAILED ($rc)")"
    [ $rc = 0 ] || tail -n 30 "$log" >&2
    rm -f "$log"
    return $rc
}

version() { # version MODULE...: the first module's installed version, if all are importable
    "$python" -c 'import importlib.metadata as m, importlib.util as u, sys
if any(u.find_spec(n) is None for n in sys.argv[1:]): sys.exit(1)
print(m.version(sys.argv[1]))' "$@" 2>/dev/null
}

if [ "$want_apt" = 1 ]; then
    missing=()
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} = 0 ]; then
        echo "install-platforms: apt packages already installed (${apt_packages[*]})"
    else
        [ "$(id -u)" = 0 ] || { echo "install-platforms: apt needs root" >&2; exit 1; }
        export DEBIAN_FRONTEND=noninteractive
        # Package lists missing or older than a day: refresh them first.
        if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null)" ]; then
            step "apt-get update" apt-get update -q
        fi
        # Keep the packages' init scripts from starting system-wide daemons.
        made_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        rc=0
        step "apt-get install ${#missing[@]} packages" apt-get install -y -q --no-install-recommends \
            "${missing[@]}" || rc=$?
        [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
        [ $rc = 0 ] || exit $rc
    fi
fi

if [ "$want_ray" = 1 ]; then
    if v="$(version ray aiohttp_cors)"; then
        echo "install-platforms: ray already installed ($v)"
    else
        step "pip install $ray_spec" "$python" -m pip install -q "$ray_spec"
    fi
fi

if [ "$want_torch" = 1 ]; then
    if v="$(version torch)"; then
        echo "install-platforms: torch already installed ($v)"
    else
        tag="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
        if ls /opt/wheels/torch-2.13.0*-"$tag"-*.whl >/dev/null 2>&1; then
            step "pip install torch==2.13.0" "$python" -m pip install -q torch==2.13.0
        else
            # PyPI's torch is a CUDA build of several GB; only the CPU wheel on disk is cheap.
            echo "install-platforms: no local torch 2.13.0 wheel for $tag in /opt/wheels;" \
                "skipped (PyPI's build is CUDA, several GB)" >&2
        fi
    fi
fi
