#!/usr/bin/env bash
# Start an MLflow tracking server on loopback over this folder's store (or the URIs you pass):
#   mlflow/server.sh                                   # sqlite store + local artifacts, port 5000
#   BACKEND=postgresql://... ARTIFACTS=s3://bucket/mlflow mlflow/server.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DO_NOT_TRACK=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
exec mlflow server --host 127.0.0.1 --port "${PORT:-5000}" \
  --backend-store-uri "${BACKEND:-sqlite:///$here/mlflow.db}" \
  --artifacts-destination "${ARTIFACTS:-$here/artifacts}"
