#!/usr/bin/env bash
# make docker-test: a REAL build of docker/Dockerfile and a run of the CLI in the container, on a machine
# with no GPU and no container registry (CI: as root, fresh clone).
#
#  1. docker daemon: use a running one; else start dockerd here (installing Debian's docker.io first
#     if needed) and stop exactly that daemon, by pid, on exit.
#  2. stand-in base image (docker/standin-base.sh): Debian bookworm + python venv, and the host's CPU wheel
#     of the pinned torch, built once and cached; the real Dockerfile's BASE_IMAGE is swapped for it.
#  3. `make docker-build` of docker/Dockerfile on the stand-in (network host, for PyPI), taking the CPU
#     wheel of the pinned torch (TORCH_PIP_ARGS, TORCH_REQUIRE_CUDA=0), and a check that the image's torch
#     is the version requirements/torch.txt pins.
#  4. `make docker-ptuning` for --help, params, smoke (no network in the container), as an arbitrary
#     non-image uid with temporary results/HF-cache folders, and a check that the smoke result files
#     written in the container appear on the host, owned by that uid.
# Idempotent: a second run reuses the stand-in and the cached layers, and removes the image it replaced.
#
# Environment: TEST_IMAGE (ptuning:docker-test), STANDIN_IMAGE (ptuning-standin-base),
#   PTUNING_DOCKERD_STORAGE (storage driver for a dockerd started here: overlay2, falling back to vfs),
#   PTUNING_DOCKER_TEST_UID (4242): the host uid the container runs as,
#   PTUNING_TORCH_PIP_ARGS (--find-links=/opt/torch-wheels, the stand-in's wheel folder): where the image build
#     takes torch from; with no local wheel there it falls back to PyPI's (CUDA, large) build, so a machine
#     that can reach it may pass "--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TEST_IMAGE="${TEST_IMAGE:-ptuning:docker-test}"
STANDIN_IMAGE="${STANDIN_IMAGE:-ptuning-standin-base}"
TEST_UID="${PTUNING_DOCKER_TEST_UID:-4242}"
TORCH_PIP_ARGS="${PTUNING_TORCH_PIP_ARGS:---find-links=/opt/torch-wheels}"
TORCH_PIN="$(sed -n 's/^torch==\([0-9][^ #;]*\).*/\1/p' requirements/torch.txt)"
T0=$SECONDS
STEP_T0=$SECONDS
log() { printf '[docker-test %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[docker-test %4ds] FAILED: %s\n' "$((SECONDS - T0))" "$*" >&2; exit 1; }
step() { log "---- $* (previous step $((SECONDS - STEP_T0)) s)"; STEP_T0=$SECONDS; }

STARTED_PID=""
TMP=""
PASSED=0
pass() { PASSED=$((PASSED + 1)); log "ok: $*"; }
cleanup() {
  local rc=$?
  [ -n "$TMP" ] && rm -rf "$TMP"
  if [ -n "$STARTED_PID" ] && kill -0 "$STARTED_PID" 2>/dev/null; then
    log "stopping the dockerd this script started (pid $STARTED_PID)"
    kill "$STARTED_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$STARTED_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$STARTED_PID" 2>/dev/null && { log "dockerd $STARTED_PID did not stop in 30 s; killing it"; kill -9 "$STARTED_PID" 2>/dev/null || true; }
  fi
  if [ "$rc" = 0 ]; then log "docker-test PASSED in $((SECONDS - T0)) s"; else log "docker-test FAILED (exit $rc) after $((SECONDS - T0)) s"; fi
  echo "docker-test: $PASSED passed, $([ "$rc" = 0 ] && echo 0 || echo 1) failed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. docker daemon ------------------------------------------------------------------------------
step "docker daemon"
need_apt=()
command -v docker >/dev/null || need_apt+=(docker.io)
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no docker daemon is reachable, and starting one needs root"
  command -v dockerd >/dev/null || need_apt+=(docker.io)
fi
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ "${#need_apt[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}; install them (apt-get install -y ${need_apt[*]})"
  log "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
    || die "apt-get install ${need_apt[*]} failed"
fi

start_dockerd() {  # $1 = storage driver; sets STARTED_PID on success
  local driver="$1" logf="/var/log/ptuning-dockerd.log"
  log "starting dockerd (storage driver $driver, no iptables, no bridge; log $logf)"
  dockerd --iptables=false --bridge=none --storage-driver="$driver" >"$logf" 2>&1 &
  local pid=$!
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then STARTED_PID=$pid; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  log "dockerd with $driver did not come up; last lines of $logf:"
  tail -15 "$logf" | sed 's/^/    /' >&2
  return 1
}
if docker info >/dev/null 2>&1; then
  log "using the running docker daemon ($(docker info -f '{{.ServerVersion}}, storage {{.Driver}}'))"
else
  driver="${PTUNING_DOCKERD_STORAGE:-overlay2}"
  start_dockerd "$driver" || { [ "$driver" != vfs ] && start_dockerd vfs; } \
    || die "could not start dockerd (see the log lines above). Start a docker daemon and rerun."
  log "dockerd up (pid $STARTED_PID, $(docker info -f '{{.ServerVersion}}, storage {{.Driver}}'))"
fi
# The docker CLI needs buildx for BuildKit; without it, use the classic builder (same Dockerfile).
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

# ---- 2. stand-in base --------------------------------------------------------------------------------
step "stand-in base image $STANDIN_IMAGE (first time: debootstrap, a few minutes)"
docker/standin-base.sh "$STANDIN_IMAGE"

# ---- 3. the real Dockerfile on the stand-in ------------------------------------------------------------
step "make docker-build IMAGE=$TEST_IMAGE BASE_IMAGE=$STANDIN_IMAGE"
previous="$(docker image inspect -f '{{.Id}}' "$TEST_IMAGE" 2>/dev/null || true)"
make --no-print-directory docker-build IMAGE="$TEST_IMAGE" BASE_IMAGE="$STANDIN_IMAGE" \
  TORCH_PIP_ARGS="$TORCH_PIP_ARGS" TORCH_REQUIRE_CUDA=0 \
  DOCKER_BUILD_ARGS="--network host" > "${TMPDIR:-/tmp}/ptuning-docker-build.log" 2>&1 \
  || { tail -40 "${TMPDIR:-/tmp}/ptuning-docker-build.log" >&2; die "docker build failed (tail above; full log ${TMPDIR:-/tmp}/ptuning-docker-build.log)"; }
grep -E '^Step [0-9]+/|Using cache|all declared dependencies|base image:|check-torch:' "${TMPDIR:-/tmp}/ptuning-docker-build.log" \
  | sed 's/^/    /' | tail -40 || true
pass "image $TEST_IMAGE built: $(docker image inspect -f '{{.Size}}' "$TEST_IMAGE" | awk '{printf "%.1f GB", $1/1e9}')"
# the image this build replaced would stay behind untagged, a few GB each time; remove it (not if a container uses it)
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$TEST_IMAGE")" ]; then
  if docker rmi "$previous" >/dev/null 2>&1; then log "removed the image this build replaced (${previous:7:12})"; fi
fi

step "the image's torch is the pinned one (requirements/torch.txt: $TORCH_PIN)"
have="$(docker run --rm --network none --entrypoint python "$TEST_IMAGE" -c 'import torch; print(torch.__version__)')" \
  || die "python -c 'import torch' failed in the image"
[ "${have%%+*}" = "$TORCH_PIN" ] || die "the image has torch $have, requirements/torch.txt pins $TORCH_PIN"
pass "torch $have in the image (pinned: $TORCH_PIN)"

# ---- 4. the CLI in the container, through the same make target users call ------------------------------
TMP="$(mktemp -d /tmp/ptuning-docker-test.XXXXXX)"
mkdir -p "$TMP/results" "$TMP/hf"
chown -R "$TEST_UID:$TEST_UID" "$TMP/results" "$TMP/hf" 2>/dev/null || chmod 777 "$TMP/results" "$TMP/hf"
in_container() {  # make docker-ptuning CMD="$*", no GPU, temporary mounts, uid TEST_UID
  make --no-print-directory docker-ptuning IMAGE="$TEST_IMAGE" GPUS= DOCKER_TTY= \
    USER_ID="$TEST_UID" GROUP_ID="$TEST_UID" RESULTS="$TMP/results" HF_CACHE="$TMP/hf" \
    DOCKER_RUN_ARGS="--network none" CMD="$*"
}
for cmd in "--help" "params" "smoke --output-dir /app/results/smoke"; do
  step "in the container: ptuning $cmd"
  in_container "$cmd" > "$TMP/out.txt" 2>&1 || { cat "$TMP/out.txt" >&2; die "ptuning $cmd failed in the container"; }
  sed 's/^/    /' "$TMP/out.txt" | tail -25
  pass "ptuning $cmd"
done

step "results written in the container appear on the host, owned by uid $TEST_UID"
shopt -s nullglob
found=("$TMP"/results/smoke/*/seed*/result.json)
shopt -u nullglob
[ "${#found[@]}" -gt 0 ] || die "no smoke result.json under $TMP/results/smoke on the host (mount of /app/results broken?)"
for f in "${found[@]}"; do
  owner="$(stat -c %u "$f")"
  [ "$owner" = "$TEST_UID" ] || die "$f is owned by uid $owner on the host, expected $TEST_UID"
done
for f in "${found[@]}"; do printf '    %s\n' "${f#"$TMP"/}"; done
pass "${#found[@]} result files on the host, all owned by uid $TEST_UID"
pickles="$(find "$TMP/results" \( -name '*.pt' -o -name '*.bin' \) -printf '%P\n')"
[ -z "$pickles" ] || die "pickled files among the smoke results (trained artifacts must be safetensors): $pickles"
pass "no .pt or .bin file among the smoke results: $(find "$TMP/results" -name '*.safetensors' | wc -l) safetensors files"
step "done"
