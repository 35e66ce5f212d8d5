#!/usr/bin/env bash
# Start the real NVIDIA Container Toolkit 1.20 with Docker 26 (from ../shared/device/toolkit) against
# a mock driver, BESIDE the machine's own Docker daemon: private socket, data root, exec root, pidfile
# and /etc tree under $GPUHOST_TK_DIR. It proves the toolkit's wiring (runtime, hook, CDI), never a GPU:
# the "GPU" is a fake NVML (mocknvml.c) and fake /dev/nvidia* nodes that no driver stands behind.
#
#   bash .ci/toolkit-daemon.sh start   # build the mock driver, start dockerd 26; prints the socket
#   bash .ci/toolkit-daemon.sh stop    # stop that dockerd and unmount what the start script mounted
#
# Needs root, gcc, and python3 with pip (nvml.h comes from NVIDIA's PyPI wheel nvidia-nvml-dev-cu12,
# downloaded into $GPUHOST_TK_DIR, never committed). ../shared is read-only: everything written goes
# under $GPUHOST_TK_DIR. The tests find the daemon through $GPUHOST_TK_DIR/env.
set -euo pipefail
ACTION=${1:-start}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${GPUHOST_TK_DIR:-/tmp/gpuhost-tk}
CARRY=${GPUHOST_TK_CARRY:-}
if [ -z "$CARRY" ]; then  # CI: ../shared beside the clone; a git worktree under wt/: two levels up
	for c in "$ROOT/../shared/device/toolkit" "$ROOT/../../shared/device/toolkit"; do
		[ -f "$c/start-toolkit-docker.sh" ] && CARRY=$(cd "$c" && pwd) && break
	done
fi
PYTHON=${PYTHON:-python3}
NVML_WHEEL=${GPUHOST_NVML_WHEEL:-nvidia-nvml-dev-cu12==12.9.79}

stop() {
	if [ -s "$W/docker.pid" ]; then
		pid=$(cat "$W/docker.pid")
		if [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/exe")" = "$W/tk/bin/dockerd" ]; then
			kill "$pid"
			for _ in $(seq 30); do [ -d "/proc/$pid" ] || break; sleep 1; done
		fi
	fi
	for m in $(awk -v r="$W/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null || true; done
}

if [ "$ACTION" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "toolkit-daemon: needs root"; exit 1; }
[ -n "$CARRY" ] && [ -f "$CARRY/start-toolkit-docker.sh" ] || { echo "toolkit-daemon: no ../shared/device/toolkit/start-toolkit-docker.sh (set GPUHOST_TK_CARRY)"; exit 1; }
stop
mkdir -p "$W"
rm -f "$W/env"

# 1. nvml.h from NVIDIA's wheel, then the mock NVML and the fake nvidia-smi
if [ ! -f "$W/nvml/include/nvml.h" ]; then
	rm -rf "$W/nvml" "$W/wheel" && mkdir -p "$W/wheel"
	"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$W/wheel" "$NVML_WHEEL"
	"$PYTHON" - "$W/wheel" "$W/nvml/include" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("include/nvml.h"))
    (out / "nvml.h").write_bytes(z.read(name))
EOF
fi
DRIVER=$W/driver
VERSION=$(sed -n 's/^#define MOCK_DRIVER "\(.*\)"/\1/p' "$CARRY/mock-driver/mocknvml.c")
rm -rf "$DRIVER" && mkdir -p "$DRIVER/lib64" "$DRIVER/bin"
gcc -shared -fPIC -O1 -Wl,-soname,libnvidia-ml.so.1 -I "$W/nvml/include" -o "$DRIVER/lib64/libnvidia-ml.so.$VERSION" "$CARRY/mock-driver/mocknvml.c"
ln -s "libnvidia-ml.so.$VERSION" "$DRIVER/lib64/libnvidia-ml.so.1"
gcc -O1 -o "$DRIVER/bin/nvidia-smi" "$CARRY/mock-driver/fake-nvidia-smi.c" -ldl

# 2. fake device nodes (no driver behind them: opening one fails, which no test does)
DEV=$W/devroot
rm -rf "$DEV" && mkdir -p "$DEV/dev"
mknod -m 666 "$DEV/dev/nvidia0" c 195 0
mknod -m 666 "$DEV/dev/nvidiactl" c 195 255
mknod -m 666 "$DEV/dev/nvidia-uvm" c 509 0
mknod -m 666 "$DEV/dev/nvidia-uvm-tools" c 509 1

# 3. the toolkit and Docker 26 on private paths
env TK_ROOT="$W/tk" TK_DRIVER_ROOT="$DRIVER" TK_DEV_ROOT="$DEV" TK_ETC="$W/etc" \
	TK_DOCKER_SOCK="$W/docker.sock" TK_DATA_ROOT="$W/data" TK_EXEC_ROOT="$W/exec" TK_PIDFILE="$W/docker.pid" \
	TK_SKIP_JIT="${TK_SKIP_JIT:-1}" TK_STORAGE_DRIVER="${TK_STORAGE_DRIVER:-}" \
	bash "$CARRY/start-toolkit-docker.sh" > "$W/start.log" 2>&1 < /dev/null || true
sed -n '/==== SUMMARY/,$p' "$W/start.log"
if ! "$W/tk/bin/docker" -H "unix://$W/docker.sock" version >/dev/null 2>&1; then
	echo "toolkit-daemon: Docker 26 with the toolkit did not come up; the end of $W/start.log:"
	tail -40 "$W/start.log"
	exit 1
fi
cat > "$W/env" <<EOF
GPUHOST_TK_DOCKER_HOST=unix://$W/docker.sock
GPUHOST_TK_BIN=$W/tk/bin
GPUHOST_TK_ETC=$W/etc
GPUHOST_TK_DRIVER=$DRIVER
GPUHOST_TK_DRIVER_VERSION=$VERSION
GPUHOST_TK_UUID=$(sed -n 's/^#define MOCK_UUID *"\(.*\)"/\1/p' "$CARRY/mock-driver/mocknvml.c")
GPUHOST_TK_IMAGE=gpuhost-base
EOF
echo "toolkit-daemon: Docker $("$W/tk/bin/docker" -H "unix://$W/docker.sock" version -f '{{.Server.Version}}') with the NVIDIA Container Toolkit answers on unix://$W/docker.sock (mock driver: wiring only, no GPU)"
