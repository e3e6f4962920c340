#!/usr/bin/env bash
# Launch one lmmops stage on all GPUs of this host with DeepSpeed, e.g.
#   infra/deepspeed/launch.sh mimic            # uses the stage's params.yaml section
# The stage reads its DeepSpeed config path from params.yaml (deepspeed_config: infra/deepspeed/zero2.json).
set -euo pipefail
stage=${1:?usage: launch.sh <stage> [extra lmmops args]}; shift
ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
exec deepspeed --num_gpus "${ngpu:-1}" --module lmmops.cli "$stage" "$@"
