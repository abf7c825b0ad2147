"""`tickertune tune --workers N`: N tuning processes on one study.

Each worker is an ordinary `tickertune tune` invocation with its share of the trials
and its own `--worker-id`, exactly what `scripts/launch_workers.sh` starts on other
machines: the study storage (Optuna's RDB or journal storage) is the only
coordination. Workers share this machine's cores (TICKERTUNE_THREADS each) and their
output is passed through, each line prefixed with the worker's id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

from tickertune.device import THREADS_ENV
from tickertune.procs import start_time


def shares(trials: int, workers: int) -> list[int]:
    """Split `trials` over `workers` as evenly as possible (no worker gets 0)."""
    return [n for n in (trials // workers + (i < trials % workers) for i in range(workers)) if n > 0]


# URLs that may hold a password travel to the workers in their environment: a command
# line is visible to every user of the machine (`ps`).
PARENT_ENV = "TICKERTUNE_LAUNCHER_PID"
_URL_OPTIONS = {"--storage": "TICKERTUNE_STORAGE", "--tracking-uri": "MLFLOW_TRACKING_URI"}


def _url_option(name: str) -> str | None:
    """The option `name` stands for (argparse accepts unique prefixes: --stor, --tracking)."""
    if len(name) >= 5:
        for option in _URL_OPTIONS:
            if option.startswith(name):
                return option
    return None


def split_urls(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`argv` without --storage/--tracking-uri, and those values as environment variables."""
    out: list[str] = []
    env: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        name, eq, value = item.partition("=")
        option = _url_option(name) if item.startswith("--") else None
        if option:
            env[_URL_OPTIONS[option]] = value if eq else next(items, "")
        else:
            out.append(item)
    return out, env


def worker_argv(argv: Sequence[str], trials: int, worker_id: int) -> list[str]:
    """The tune command line of one worker: the user's (global options first, then the tune
    options), with its share and id last (argparse keeps the last value of an option)."""
    glob = [a for a in argv if a in ("-q", "--quiet")]
    rest = [a for a in argv if a not in ("-q", "--quiet", "--progress", "--no-progress")]
    return [*glob, "tune", *rest, "--workers", "1", "--trials", str(trials), "--worker-id",
            str(worker_id), "--no-progress"]


def _pump(src: IO[str], dst: IO[str], prefix: str) -> None:
    for line in src:
        try:
            dst.write(prefix + line)
            dst.flush()
        except (OSError, ValueError):  # our own output is gone: keep draining the worker's
            pass


def launch(argv: Sequence[str], trials: int, workers: int, first_id: int = 1,
           env: dict[str, str | None] | None = None) -> int:
    """Run the workers to their end; 130 if interrupted, else the first non-zero exit code.

    `env`: changes to the workers' environment (None removes a variable)."""
    argv, urls = split_urls(argv)
    changes = {THREADS_ENV: str(max(1, (os.cpu_count() or 1) // workers)), **urls, **(env or {})}
    env = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    procs: list[tuple[int, subprocess.Popen]] = []
    pumps: list[threading.Thread] = []
    env[PARENT_ENV] = f"{os.getpid()}:{start_time(os.getpid())}"  # a worker whose launcher dies stops
    interrupted = False
    try:
        for i, n in enumerate(shares(trials, workers)):
            wid = first_id + i
            p = subprocess.Popen([sys.executable, "-m", "tickertune", *worker_argv(argv, n, wid)],
                                 env=env, text=True, bufsize=1, errors="replace",
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 # Own process group: a terminal's Ctrl-C reaches this process
                                 # only, which passes on exactly one SIGINT per press.
                                 process_group=0)
            procs.append((wid, p))
            for src, dst in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(src, dst, f"[w{wid}] "), daemon=True)
                t.start()
                pumps.append(t)
            print(f"worker {wid}: pid {p.pid}, {n} trial{'s' * (n != 1)}", file=sys.stderr, flush=True)
        while True:
            try:
                codes = [p.wait() for _, p in procs]
                break
            except KeyboardInterrupt:
                # Each worker ends its trial at its next step, closes its runs and exits 130;
                # a second Ctrl-C stops them at once. SIGTERM, not SIGINT: a worker started
                # from a background job inherits SIGINT ignored; tickertune always handles TERM.
                interrupted = True
                _signal_all(procs, signal.SIGTERM)
    except BaseException:
        _signal_all(procs, signal.SIGTERM)  # never leave a worker running behind us
        raise
    for t in pumps:
        t.join(timeout=5)
    codes = [128 - c if c < 0 else c for c in codes]  # killed by signal N: 128+N, as a shell says
    for (wid, _), code in zip(procs, codes):
        if code:
            print(f"worker {wid} exited with code {code}", file=sys.stderr)
    if interrupted or 130 in codes:
        raise KeyboardInterrupt
    return next((c for c in codes if c), 0)


def _signal_all(procs: list[tuple[int, subprocess.Popen]], sig: int) -> None:
    for _, p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except OSError:
                pass


def watch_launcher() -> None:
    """In a worker: when the launcher that started it dies (kill -9, lost terminal), stop
    the way Ctrl-C does (SIGTERM to itself), so the trial and its runs end cleanly."""
    pid, _, start = os.environ.pop(PARENT_ENV, "").partition(":")  # not for our own children
    if not pid.isdigit() or os.getppid() != int(pid) or start_time(int(pid)) != start:
        return  # not started by a live launcher (a stale variable from some shell)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Inherited from a background job (`nohup ... &`): the launcher, not a terminal,
        # decides when this worker stops, and `kill -INT` on a worker should work too.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch() -> None:
        while os.getppid() == int(pid):
            time.sleep(0.1)  # a getppid() call: cheap; the trial must still be running
        devnull = os.open(os.devnull, os.O_WRONLY)  # the launcher read our output; it is gone
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tickertune-launcher-watch", daemon=True).start()
