#!/usr/bin/env bash
# Start (or stop) a local MLflow tracking server for tickertune, backed by PostgreSQL.
#
#   scripts/mlflow_server.sh [--port 5000] [--host 127.0.0.1]
#                            [--backend postgresql://postgres@127.0.0.1:5432/mlflow]
#                            [--artifacts ./mlartifacts] [--create-db | --no-create-db]
#                            [--log FILE] [--pidfile FILE] [--timeout 120] [--workers 1]
#                            [-- EXTRA MLFLOW SERVER ARGS]
#   scripts/mlflow_server.sh --stop [--port 5000 | --pidfile FILE]
#
# The server runs in the background in its own session (setsid + nohup), stores runs
# and the model registry in the backend database (created when missing), and serves
# artifacts itself (--artifacts-destination), so clients on other machines upload and
# download through it. The script returns once GET /health answers 200, printing the
# tracking URI to export; it fails (exit 1, with the log tail) if the server exits or
# does not answer within --timeout seconds.
#
# Environment equivalents: MLFLOW_SERVER_PORT, MLFLOW_SERVER_HOST, MLFLOW_SERVER_BACKEND,
# MLFLOW_SERVER_ARTIFACTS, MLFLOW_SERVER_LOG, MLFLOW_SERVER_PIDFILE, MLFLOW_SERVER_TIMEOUT,
# MLFLOW_SERVER_WORKERS; PYTHON picks the interpreter (default: the active environment's
# python, i.e. the first python3/python on PATH).
set -euo pipefail

PORT="${MLFLOW_SERVER_PORT:-5000}"
HOST="${MLFLOW_SERVER_HOST:-127.0.0.1}"
BACKEND="${MLFLOW_SERVER_BACKEND:-postgresql://postgres@127.0.0.1:5432/mlflow}"
ARTIFACTS="${MLFLOW_SERVER_ARTIFACTS:-./mlartifacts}"
LOG="${MLFLOW_SERVER_LOG:-}"
PIDFILE="${MLFLOW_SERVER_PIDFILE:-}"
TIMEOUT="${MLFLOW_SERVER_TIMEOUT:-120}"
WORKERS="${MLFLOW_SERVER_WORKERS:-1}"
CREATE_DB=1
ACTION=start
EXTRA=()

die() { echo "mlflow_server.sh: error: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# user:password@host -> user:***@host (never print a password from a URL)
mask() { sed -E -e 's#(://[^:/@[:space:]]*):[^[:space:]]*@#\1:***@#g' -e 's#([?&;](password|passwd|pwd)=)[^&[:space:]]*#\1***#Ig' <<<"$1"; }

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) need_value "$@"; PORT="$2"; shift 2 ;;
    --host) need_value "$@"; HOST="$2"; shift 2 ;;
    --backend|--backend-store-uri) need_value "$@"; BACKEND="$2"; shift 2 ;;
    --artifacts|--artifacts-destination) need_value "$@"; ARTIFACTS="$2"; shift 2 ;;
    --log) need_value "$@"; LOG="$2"; shift 2 ;;
    --pidfile) need_value "$@"; PIDFILE="$2"; shift 2 ;;
    --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
    --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
    --create-db) CREATE_DB=1; shift ;;
    --no-create-db) CREATE_DB=0; shift ;;
    --stop) ACTION=stop; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number (got $PORT)"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds (got $TIMEOUT)"
PIDFILE="${PIDFILE:-./mlflow-server-$PORT.pid}"
LOG="${LOG:-./mlflow-server-$PORT.log}"

# -- stop ---------------------------------------------------------------------------------
# The server runs in its own session: `python -m mlflow server` (the pid in the file, also
# the process group id) -> uvicorn -> workers. TERM the whole group, KILL it after 20 s.
alive() {  # running, and not a zombie waiting to be reaped
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]
}

group_of() { ps -o pgid= -p "$1" 2>/dev/null | tr -d ' '; }

stop_server() {
  [[ -f "$PIDFILE" ]] || die "no pid file $PIDFILE (was the server started with this --port/--pidfile?)"
  local pid target
  pid="$(tr -dc '0-9' <"$PIDFILE")"
  [[ -n "$pid" ]] || die "pid file $PIDFILE is empty"
  if ! alive "$pid"; then
    echo "mlflow server (pid $pid) is not running; removing $PIDFILE"
    rm -f "$PIDFILE"
    return 0
  fi
  target="$pid"
  [[ "$(group_of "$pid")" == "$pid" ]] && target="-$pid"  # its own group: signal all of it
  kill -TERM -- "$target" 2>/dev/null || true
  for _ in $(seq 1 40); do
    alive "$pid" || break
    sleep 0.5
  done
  if alive "$pid"; then
    echo "mlflow server (pid $pid) did not stop after TERM; sending KILL" >&2
    kill -KILL -- "$target" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDFILE"
  echo "mlflow server (pid $pid) stopped"
}

if [[ "$ACTION" == stop ]]; then
  stop_server
  exit 0
fi

# -- start --------------------------------------------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PYTHON="$VIRTUAL_ENV/bin/python"
  else
    PYTHON="$(command -v python3 || command -v python || true)"
  fi
fi
[[ -n "$PYTHON" ]] || die "no python found; set PYTHON=/path/to/python"
"$PYTHON" -c "import mlflow" 2>/dev/null || die "$PYTHON cannot import mlflow (activate the project's environment or set PYTHON)"

export MLFLOW_DISABLE_TELEMETRY=true
# The server's job runner (huey consumer: GenAI evaluation jobs) is not needed here and
# costs a process; keep it off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

URI="http://$HOST:$PORT"
[[ "$HOST" == "0.0.0.0" ]] && URI="http://127.0.0.1:$PORT"

health_code() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$URI/health" 2>/dev/null || true
  else
    "$PYTHON" - "$URI/health" <<'EOF' 2>/dev/null || echo 000
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except Exception as exc:
    print(getattr(exc, "code", "000"))
EOF
  fi
}

if [[ -f "$PIDFILE" ]]; then
  old="$(tr -dc '0-9' <"$PIDFILE")"
  if [[ -n "$old" ]] && alive "$old"; then
    die "a server from $PIDFILE is already running (pid $old); stop it: $0 --stop --pidfile $PIDFILE"
  fi
  rm -f "$PIDFILE"
fi
code="$(health_code)"
[[ "$code" == "000" || -z "$code" ]] || die "something already answers on $URI (HTTP $code); pick another --port"

# SQLAlchemy 2.1 maps a bare postgresql:// to the psycopg (3) driver; when only psycopg2
# is installed, name it explicitly.
case "$BACKEND" in
  postgres://*) BACKEND="postgresql://${BACKEND#postgres://}" ;;
esac
if [[ "$BACKEND" == postgresql://* ]] && ! "$PYTHON" -c "import psycopg" 2>/dev/null \
    && "$PYTHON" -c "import psycopg2" 2>/dev/null; then
  BACKEND="postgresql+psycopg2://${BACKEND#postgresql://}"
fi
SHOWN_BACKEND="$(mask "$BACKEND")"

if [[ "$CREATE_DB" == 1 && "$BACKEND" == postgresql* ]]; then
  # Connect to the server's `postgres` database and create the backend's database if missing.
  MLFLOW_SERVER_BACKEND_URL="$BACKEND" "$PYTHON" - <<'EOF' || die "could not create the backend database (see above)"
import os, re, sys
from urllib.parse import unquote, urlsplit, urlunsplit

url = re.sub(r"^postgresql\+\w+://", "postgresql://", os.environ["MLFLOW_SERVER_BACKEND_URL"])
parts = urlsplit(url)
db = unquote(parts.path.lstrip("/"))
if not db:
    sys.exit(0)
admin = urlunsplit(parts._replace(path="/postgres"))
try:
    import psycopg2 as driver
except ImportError:
    import psycopg as driver
def masked(text):
    text = re.sub(r"(://[^:/@\s]*):\S*?@(?=[^@\s]*(?:\s|$))", r"\1:***@", str(text))
    return re.sub(r"([?&;](?:password|passwd|pwd)=)[^&\s]+", r"\1***", text, flags=re.I)
try:
    con = driver.connect(admin, connect_timeout=5)
except Exception as exc:
    print(f"cannot connect to PostgreSQL at {masked(admin)}: {masked(str(exc).strip().splitlines()[0])}",
          file=sys.stderr)
    sys.exit(1)
con.autocommit = True
with con.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
    if cur.fetchone() is None:
        cur.execute('CREATE DATABASE "{}"'.format(db.replace('"', '""')))
        print(f"created database {db}")
con.close()
EOF
fi

case "$ARTIFACTS" in
  *://*) ;;                                   # s3://, gs://, file:// ...: as given
  *) mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)" ;;
esac
mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
LOG="$(cd "$(dirname "$LOG")" && pwd)/$(basename "$LOG")"
PIDFILE="$(cd "$(dirname "$PIDFILE")" && pwd)/$(basename "$PIDFILE")"

echo "starting mlflow server on $URI (backend $SHOWN_BACKEND, artifacts $ARTIFACTS, log $LOG)"
: >"$LOG"
# setsid: own session and process group (pid == pgid), so --stop reaches uvicorn and its
# workers too, and a Ctrl-C in this terminal does not. Not a group leader here (no job
# control in a script), so setsid execs in place and $! is the server's pid.
# The backend URL goes in the environment (MLFLOW_BACKEND_STORE_URI), not on the command
# line, so a password in it does not show in `ps`.
MLFLOW_BACKEND_STORE_URI="$BACKEND" setsid nohup "$PYTHON" -m mlflow server \
  --host "$HOST" --port "$PORT" \
  --serve-artifacts --artifacts-destination "$ARTIFACTS" \
  --workers "$WORKERS" \
  ${EXTRA[@]+"${EXTRA[@]}"} \
  >>"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"

started=$SECONDS
while :; do
  code="$(health_code)"
  [[ "$code" == 200 ]] && break
  if ! alive "$PID"; then
    echo "mlflow_server.sh: error: the mlflow server exited before /health answered; last lines of $LOG:" >&2
    tail -n 30 "$LOG" | while IFS= read -r line; do mask "$line"; done >&2
    rm -f "$PIDFILE"
    exit 1
  fi
  if (( SECONDS - started >= TIMEOUT )); then
    echo "mlflow_server.sh: error: $URI/health did not answer 200 within $TIMEOUT s (last: HTTP ${code:-none}); stopping pid $PID; last lines of $LOG:" >&2
    tail -n 30 "$LOG" | while IFS= read -r line; do mask "$line"; done >&2
    stop_server >/dev/null 2>&1 || true
    exit 1
  fi
  sleep 1
done

echo "mlflow server is up (pid $PID, /health answered after $((SECONDS - started)) s)"
echo "  export MLFLOW_TRACKING_URI=$URI"
echo "  stop it: kill -TERM \$(cat $PIDFILE)   (or: $0 --stop --pidfile $PIDFILE)"
