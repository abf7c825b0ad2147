#!/usr/bin/env bash
# Start tickertune workers on this machine against ONE shared study storage and ONE
# MLflow tracking server, so that workers on several machines tune the same study.
#
#   export TICKERTUNE_STORAGE=postgresql://tuner:PASSWORD@db-host:5432/optuna
#   export MLFLOW_TRACKING_URI=http://mlflow-host:5000      # scripts/mlflow_server.sh
#   scripts/launch_workers.sh AAPL --workers 2 --first-id 1 -- --trials 100 --model xgb  # machine A
#   scripts/launch_workers.sh AAPL --workers 2 --first-id 3 -- --trials 100 --model xgb  # machine B
#
# Each machine runs `tickertune tune TICKER --workers N --worker-id FIRST ...` with the two
# URLs in its environment (a command line would show a password to `ps`): N processes
# sharing that machine's --trials, with worker ids FIRST..FIRST+N-1 (give each machine its
# own range, so no two workers start the sampler at the same point). Optuna's RDB storage
# is the only coordination: trial numbers are unique, and a worker that dies mid-trial is
# noticed by its heartbeat; the next trial start in any worker fails that trial, retries
# its params once and closes its MLflow runs as FAILED.
# Options after `--` go to `tickertune tune` unchanged. Ctrl-C stops every worker cleanly.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
mask() { sed -E -e 's#(://[^:/@[:space:]]*):[^[:space:]]*@#\1:***@#g' -e 's#([?&;](password|passwd|pwd)=)[^&[:space:]]*#\1***#Ig' <<<"$1"; }
die() { echo "launch_workers.sh: error: $*" >&2; exit 2; }

[[ $# -ge 1 && $1 != -* ]] || usage
TICKER=$1; shift
WORKERS=$(nproc 2>/dev/null || echo 1)
FIRST=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) WORKERS=${2:?}; shift 2 ;;
    --first-id) FIRST=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (tickertune options go after --)" ;;
  esac
done
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a whole number >= 1 (got $WORKERS)"
[[ $FIRST =~ ^[1-9][0-9]*$ ]] || die "--first-id must be a whole number >= 1 (got $FIRST)"
STORAGE=${TICKERTUNE_STORAGE:-}
TRACKING=${MLFLOW_TRACKING_URI:-}
[[ -n $STORAGE ]] || die "set TICKERTUNE_STORAGE to the shared study storage, e.g. postgresql://user:pw@db-host:5432/optuna"
[[ $STORAGE == postgresql* || $STORAGE == postgres:* ]] ||
  echo "launch_workers.sh: warning: $(mask "$STORAGE") is local to this machine; workers on other machines need PostgreSQL" >&2
[[ -n $TRACKING ]] || die "set MLFLOW_TRACKING_URI to the tracking server, e.g. http://mlflow-host:5000 (scripts/mlflow_server.sh)"
[[ $TRACKING == http://* || $TRACKING == https://* ]] ||
  echo "launch_workers.sh: warning: $(mask "$TRACKING") is not a tracking server; runs from other machines will not reach it" >&2

PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import tickertune" 2>/dev/null; then
  export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "launch_workers.sh: $WORKERS worker(s) with ids $FIRST..$((FIRST + WORKERS - 1)) on $(hostname)," \
     "storage $(mask "$STORAGE"), tracking $(mask "$TRACKING")" >&2
# exec: Ctrl-C and SIGTERM reach tickertune, which stops its workers and exits 130.
# The URLs stay in the environment (TICKERTUNE_STORAGE, MLFLOW_TRACKING_URI), where `ps`
# does not show a password.
exec "$PYTHON" -m tickertune tune "$TICKER" --workers "$WORKERS" --worker-id "$FIRST" "$@"
