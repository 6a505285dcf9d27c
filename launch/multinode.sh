#!/usr/bin/env bash
# Runs one process of a multi-host bpr-jax job on a cluster without Slurm.
#
# Start it once on every host (or once per GPU, see LOCAL_DEVICE_IDS), each
# with its own PROCESS_ID and the same COORDINATOR_ADDRESS / NUM_PROCESSES:
#
#   # host 0 (also the coordinator)        # host 1
#   COORDINATOR_ADDRESS=10.0.0.1:12355 \   COORDINATOR_ADDRESS=10.0.0.1:12355 \
#   NUM_PROCESSES=2 PROCESS_ID=0 \         NUM_PROCESSES=2 PROCESS_ID=1 \
#   WORKDIR=/shared/runs/nq \              WORKDIR=/shared/runs/nq \
#     launch/multinode.sh                    launch/multinode.sh
#
# Environment (defaults in brackets):
#   COORDINATOR_ADDRESS  host:port of process 0, reachable from every host (required)
#   NUM_PROCESSES        total number of processes (required)
#   PROCESS_ID           this process, 0 .. NUM_PROCESSES-1 (required)
#   LOCAL_DEVICE_IDS     GPUs this process uses, e.g. "0,1,2,3" or "3" [all visible]
#   CONFIG               training config [configs/nq.py]
#   WORKDIR              checkpoints and logs, a shared folder or gs:// path (required for bpr_jax.main)
#   MODULE               Python module to run [bpr_jax.main]; bpr_jax.encode gets
#                        --num_shards=NUM_PROCESSES --shard_index=PROCESS_ID unless given
#   PYTHON               interpreter [.venv/bin/python if present, else python3]
#   LOG_DIR              per-process logs, LOG_DIR/process-ID.log [logs]
#   DRY_RUN=1            print the environment and command instead of running
# Arguments are passed through to the module (e.g. --config.batch_size=64).
#
# bpr_jax.main reads BPR_COORDINATOR_ADDRESS, BPR_NUM_PROCESSES and
# BPR_PROCESS_ID (exported here) and calls jax.distributed.initialize with them.
set -euo pipefail

die() {
  echo "multinode.sh: error: $*" >&2
  exit 2
}

is_uint() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COORDINATOR_ADDRESS="${COORDINATOR_ADDRESS:-}"
NUM_PROCESSES="${NUM_PROCESSES:-}"
PROCESS_ID="${PROCESS_ID:-}"
LOCAL_DEVICE_IDS="${LOCAL_DEVICE_IDS:-}"
CONFIG="${CONFIG:-configs/nq.py}"
WORKDIR="${WORKDIR:-}"
MODULE="${MODULE:-bpr_jax.main}"
LOG_DIR="${LOG_DIR:-logs}"
DRY_RUN="${DRY_RUN:-0}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    PYTHON="${REPO_ROOT}/.venv/bin/python"
  else
    PYTHON="python3"
  fi
fi

[[ -n "${COORDINATOR_ADDRESS}" ]] || die "set COORDINATOR_ADDRESS=host:port (the address of process 0)"
[[ "${COORDINATOR_ADDRESS}" =~ ^[^:]+:[0-9]+$|^\[[0-9a-fA-F:]+\]:[0-9]+$ ]] \
  || die "COORDINATOR_ADDRESS must look like host:port, got '${COORDINATOR_ADDRESS}'"
if ! is_uint "${NUM_PROCESSES}" || ((10#${NUM_PROCESSES} < 1)); then
  die "set NUM_PROCESSES to a positive integer, got '${NUM_PROCESSES}'"
fi
is_uint "${PROCESS_ID}" || die "set PROCESS_ID to an integer in [0, ${NUM_PROCESSES}), got '${PROCESS_ID}'"
((10#${PROCESS_ID} < 10#${NUM_PROCESSES})) || die "PROCESS_ID=${PROCESS_ID} must be < NUM_PROCESSES=${NUM_PROCESSES}"
if [[ -n "${LOCAL_DEVICE_IDS}" ]]; then
  [[ "${LOCAL_DEVICE_IDS}" =~ ^[0-9]+(,[0-9]+)*$ ]] \
    || die "LOCAL_DEVICE_IDS must be a comma-separated list of integers, got '${LOCAL_DEVICE_IDS}'"
  export JAX_LOCAL_DEVICE_IDS="${LOCAL_DEVICE_IDS}"
fi

export BPR_COORDINATOR_ADDRESS="${COORDINATOR_ADDRESS}"
export BPR_NUM_PROCESSES="${NUM_PROCESSES}"
export BPR_PROCESS_ID="${PROCESS_ID}"

cmd=("${PYTHON}" -m "${MODULE}")
if [[ "${MODULE}" == "bpr_jax.main" ]]; then
  [[ -n "${WORKDIR}" ]] || die "set WORKDIR (a folder every host can reach, or gs://bucket/path)"
  cmd+=("--config=${CONFIG}" "--workdir=${WORKDIR}")
elif [[ "${MODULE}" == "bpr_jax.encode" && " $* " != *" --num_shards="* ]]; then
  # One shard per process, whether or not the encoder sets up jax.distributed.
  cmd+=("--num_shards=${NUM_PROCESSES}" "--shard_index=${PROCESS_ID}")
fi
cmd+=("$@")

log_file="${LOG_DIR}/process-${PROCESS_ID}.log"
if [[ "${DRY_RUN}" == "1" ]]; then
  echo "BPR_COORDINATOR_ADDRESS=${BPR_COORDINATOR_ADDRESS}"
  echo "BPR_NUM_PROCESSES=${BPR_NUM_PROCESSES}"
  echo "BPR_PROCESS_ID=${BPR_PROCESS_ID}"
  echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"
  echo "LOG=${log_file}"
  printf 'CMD='
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

cd "${REPO_ROOT}"
mkdir -p "${LOG_DIR}"
echo "multinode.sh: process ${PROCESS_ID}/${NUM_PROCESSES} -> ${COORDINATOR_ADDRESS}; log ${log_file}" >&2
"${cmd[@]}" 2>&1 | tee -a "${log_file}"
exit "${PIPESTATUS[0]}"
