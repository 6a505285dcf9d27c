#!/usr/bin/env bash
# Trains bpr-jax on a Cloud TPU VM (single host or pod slice).
#
#   WORKDIR=gs://my-bucket/bpr/nq launch/tpu_pod.sh [OPTIONS] [STEP ...] [-- MAIN_ARGS ...]
#
# Steps (default: up copy setup run):
#   up      create the TPU VM, or reuse it if it exists (a stopped one is started)
#   copy    tar the working tree and copy it to every worker (scp --worker=all)
#   setup   on every worker: unpack, create .venv, pip install jax[tpu] and -e .
#   run     run `python -m bpr_jax.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS`
#           on all workers at once (ssh --worker=all); each worker writes its own
#           log, fetched afterwards into LOG_DIR/worker-N.log
#   logs    fetch the per-worker logs of the last run again
#   delete  delete the TPU VM
#
# Options (or environment variables; defaults in brackets):
#   --tpu_name=NAME         TPU_NAME          [bpr-jax]
#   --zone=ZONE             ZONE              [us-central2-b]
#   --accelerator_type=T    ACCELERATOR_TYPE  [v4-32]
#   --runtime_version=V     RUNTIME_VERSION   [tpu-ubuntu2204-base]
#   --project=P             PROJECT           [gcloud's default project]
#   --config=FILE           CONFIG            [configs/nq.py]
#   --workdir=DIR           WORKDIR           gs://bucket/path (or a folder on the workers) (required for run)
#   --spot                  SPOT=1            create a Spot TPU
#   --detach                DETACH=1          start the run in the background (nohup) and return
#   --log_dir=DIR           LOG_DIR           [logs/tpu-TPU_NAME]
#   --dry_run               DRY_RUN=1         print the gcloud commands instead of running them
#   REMOTE_DIR [bpr-jax] folder in the workers' home; JAX_TPU_SPEC ['jax[tpu]'] pip spec;
#   GCLOUD [gcloud] the gcloud binary.
# Arguments after `--` (or any unrecognised --flag) are passed to bpr_jax.main.
set -euo pipefail

die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 2
}

log() {
  echo "tpu_pod.sh: $*" >&2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU_NAME="${TPU_NAME:-bpr-jax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
CONFIG="${CONFIG:-configs/nq.py}"
WORKDIR="${WORKDIR:-}"
SPOT="${SPOT:-0}"
DETACH="${DETACH:-0}"
DRY_RUN="${DRY_RUN:-0}"
LOG_DIR="${LOG_DIR:-}"
REMOTE_DIR="${REMOTE_DIR:-bpr-jax}"
JAX_TPU_SPEC="${JAX_TPU_SPEC:-jax[tpu]}"
GCLOUD="${GCLOUD:-gcloud}"

steps=()
main_args=()
while (($# > 0)); do
  case "$1" in
    --tpu_name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --runtime_version=*) RUNTIME_VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --log_dir=*) LOG_DIR="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    up | copy | setup | run | logs | delete) steps+=("$1") ;;
    --)
      shift
      main_args+=("$@")
      break
      ;;
    --*) main_args+=("$1") ;;
    *) die "unknown step or argument '$1' (steps: up copy setup run logs delete; see --help)" ;;
  esac
  shift
done
((${#steps[@]} > 0)) || steps=(up copy setup run)
LOG_DIR="${LOG_DIR:-logs/tpu-${TPU_NAME}}"
[[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "TPU_NAME '${TPU_NAME}' must be lowercase letters, digits and dashes"
[[ "${REMOTE_DIR}" =~ ^[A-Za-z0-9._/-]+$ ]] || die "REMOTE_DIR '${REMOTE_DIR}' has unsafe characters"

gcloud_flags=("--zone=${ZONE}")
[[ -z "${PROJECT}" ]] || gcloud_flags+=("--project=${PROJECT}")

# Runs a command, or prints it under DRY_RUN=1.
run_cmd() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    printf '+'
    printf ' %q' "$@"
    echo
  else
    "$@"
  fi
}

tpu() {
  run_cmd "${GCLOUD}" compute tpus tpu-vm "$@" "${gcloud_flags[@]}"
}

tpu_state() {
  "${GCLOUD}" compute tpus tpu-vm describe "${TPU_NAME}" "${gcloud_flags[@]}" \
    --format='value(state)' 2> /dev/null || true
}

num_workers() {
  local endpoints
  if [[ "${DRY_RUN}" == "1" ]]; then
    echo "${NUM_WORKERS:-1}"
    return
  fi
  endpoints="$("${GCLOUD}" compute tpus tpu-vm describe "${TPU_NAME}" "${gcloud_flags[@]}" \
    --format='value(networkEndpoints[].ipAddress)')"
  [[ -n "${endpoints}" ]] || die "cannot list the workers of ${TPU_NAME}"
  local ips=()
  IFS=';,' read -r -a ips <<< "${endpoints}"
  echo "${#ips[@]}"
}

step_up() {
  local state
  if [[ "${DRY_RUN}" == "1" ]]; then
    state=""
  else
    state="$(tpu_state)"
  fi
  case "${state}" in
    READY)
      log "reusing ${TPU_NAME} (${ZONE}), state READY"
      ;;
    STOPPED)
      log "starting stopped ${TPU_NAME}"
      tpu start "${TPU_NAME}"
      ;;
    "")
      log "creating ${TPU_NAME}: ${ACCELERATOR_TYPE}, ${RUNTIME_VERSION}, ${ZONE}"
      local create=(create "${TPU_NAME}" "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}")
      [[ "${SPOT}" != "1" ]] || create+=(--spot)
      tpu "${create[@]}"
      ;;
    *)
      die "${TPU_NAME} is in state ${state}; wait for it, or delete it (step 'delete') and retry"
      ;;
  esac
}

step_copy() {
  local tarball
  if [[ "${DRY_RUN}" == "1" ]]; then
    run_cmd tar -czf bpr-jax.tar.gz -C "${REPO_ROOT}" --exclude=... .
    tpu scp bpr-jax.tar.gz "${TPU_NAME}:bpr-jax.tar.gz" --worker=all
    return
  fi
  tarball="$(mktemp -d)/bpr-jax.tar.gz"
  log "packing ${REPO_ROOT} -> ${tarball}"
  tar -czf "${tarball}" -C "${REPO_ROOT}" \
    --exclude=./.git --exclude=./.venv --exclude=./logs --exclude=./runs \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache .
  tpu scp "${tarball}" "${TPU_NAME}:bpr-jax.tar.gz" --worker=all
  rm -rf "$(dirname "${tarball}")"
}

step_setup() {
  local spec remote
  printf -v spec '%q' "${JAX_TPU_SPEC}"
  remote="set -e; mkdir -p ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR}"
  remote+=" && find . -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +"
  remote+=" && tar -xzf ~/bpr-jax.tar.gz"
  remote+=" && { [ -x .venv/bin/python ] || python3 -m venv .venv; }"
  remote+=" && .venv/bin/pip install -q --upgrade pip"
  remote+=" && .venv/bin/pip install -q ${spec} && .venv/bin/pip install -q -e ."
  remote+=" && .venv/bin/python -c 'import jax, bpr_jax; print(\"jax\", jax.__version__)'"
  log "bootstrapping the environment on every worker"
  tpu ssh "${TPU_NAME}" --worker=all "--command=${remote}"
}

step_run() {
  local args remote run_log
  [[ -n "${WORKDIR}" ]] || die "set WORKDIR (or --workdir=gs://bucket/path) for the run step"
  printf -v args ' %q' "--config=${CONFIG}" "--workdir=${WORKDIR}" "${main_args[@]}"
  run_log="\${HOME}/bpr-jax-logs/run.log"
  remote="cd ~/${REMOTE_DIR} && mkdir -p ~/bpr-jax-logs"
  remote+=" && { [ ! -f ${run_log} ] || mv ${run_log} ~/bpr-jax-logs/run.\$(date +%Y%m%d-%H%M%S).log; }"
  if [[ "${DETACH}" == "1" ]]; then
    remote+=" && nohup .venv/bin/python -m bpr_jax.main${args} > ${run_log} 2>&1 < /dev/null &"
  else
    remote+=" && .venv/bin/python -m bpr_jax.main${args} 2>&1 | tee ${run_log}; exit \${PIPESTATUS[0]}"
  fi
  log "running bpr_jax.main on all workers of ${TPU_NAME}"
  local status=0
  tpu ssh "${TPU_NAME}" --worker=all "--command=${remote}" || status=$?
  if [[ "${DETACH}" == "1" ]]; then
    log "started in the background; fetch logs later with: $0 --tpu_name=${TPU_NAME} --zone=${ZONE} logs"
  else
    step_logs || true
  fi
  return "${status}"
}

step_logs() {
  local n i
  n="$(num_workers)"
  [[ "${DRY_RUN}" == "1" ]] || mkdir -p "${LOG_DIR}"
  for ((i = 0; i < n; i++)); do
    tpu scp "${TPU_NAME}:bpr-jax-logs/run.log" "${LOG_DIR}/worker-${i}.log" --worker="${i}" \
      || log "could not fetch the log of worker ${i}"
  done
  log "per-worker logs in ${LOG_DIR}/worker-N.log (${n} workers)"
}

step_delete() {
  tpu delete "${TPU_NAME}" --quiet
}

command -v "${GCLOUD}" > /dev/null || [[ "${DRY_RUN}" == "1" ]] \
  || die "gcloud not found; install the Google Cloud CLI or set GCLOUD=/path/to/gcloud"
for step in "${steps[@]}"; do
  "step_${step}"
done
