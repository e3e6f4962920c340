#!/usr/bin/env bash
# Launch one lmmops stage on all GPUs of this host with DeepSpeed, e.g.
#   infra/deepspeed/launch.sh mimic            # uses the stage's params.yaml section
# The stage reads its DeepSpeed config path from params.yaml (`deepspeed: infra/deepspeed/zero2.json`).
# --no_local_rank: the launcher would otherwise append --local_rank=N, which the lmmops CLI does not take
# (each rank reads LOCAL_RANK from the environment). Same with torchrun:
#   torchrun --standalone --nproc_per_node N -m lmmops.cli mimic
set -euo pipefail
stage=${1:?usage: launch.sh <stage> [extra lmmops args]}; shift
ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "${ngpu:-0}" -gt 0 ] || ngpu=1
exec deepspeed --no_local_rank --num_gpus "$ngpu" --module lmmops.cli "$stage" "$@"
