#!/usr/bin/env bash
# A local MLflow tracking server: SQLite backend store, local artifact root served through the
# server, bound to 127.0.0.1 (loopback only) unless MLFLOW_HOST says otherwise.
#
#   mlflow/server.sh [PORT] [DIR]        # defaults: 5000, ./mlflow-server
#   python -m pipelines task=sentiment model=lstm logger.tracking_uri=http://127.0.0.1:5000
#
# DIR holds mlflow.db (runs, metrics, params, the model registry) and artifacts/.
# Environment: MLFLOW_HOST (127.0.0.1), MLFLOW_WORKERS (1), MLFLOW_PORT and MLFLOW_DIR (when no
# arguments), MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false here: MLflow's GenAI job runner starts a
# dozen worker processes that training runs never use; set it to true if you need them).
set -euo pipefail
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

port="${1:-${MLFLOW_PORT:-5000}}"
dir="${2:-${MLFLOW_DIR:-mlflow-server}}"
host="${MLFLOW_HOST:-127.0.0.1}"
mkdir -p "$dir/artifacts"
dir="$(cd "$dir" && pwd)"
uri="http://$host:$port"

echo "MLflow tracking server: $uri   (store: $dir)"
echo "  train:   python -m pipelines task=sentiment model=lstm logger.tracking_uri=$uri"
echo "  or:      export MLFLOW_TRACKING_URI=$uri"
echo "  compare: python -m pipelines.compare --experiment sentiment --tracking-uri $uri"
exec mlflow server --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-1}" \
  --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$dir/artifacts"
