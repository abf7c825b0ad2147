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
from typing import IO, Sequence

from tickertune.device import THREADS_ENV


def shares(trials: int, workers: int) -> list[int]:
    """Split `trials` over `workers` as evenly as possible (no worker gets 0)."""
    return [n for n in (trials // workers + (i < trials % workers) for i in range(workers)) if n > 0]


def worker_argv(argv: Sequence[str], trials: int, worker_id: int) -> list[str]:
    """The tune command line of one worker: the user's, with its share and id last
    (argparse keeps the last value of a repeated option)."""
    return [*argv, "--workers", "1", "--trials", str(trials), "--worker-id", str(worker_id),
            "--no-progress"]


def _pump(src: IO[str], dst: IO[str], prefix: str) -> None:
    for line in src:
        dst.write(prefix + line)
        dst.flush()


def launch(argv: Sequence[str], trials: int, workers: int, first_id: int = 1,
           env: dict[str, str | None] | None = None) -> int:
    """Run the workers to their end; 130 if interrupted, else the first non-zero exit code.

    `env`: changes to the workers' environment (None removes a variable)."""
    changes = {THREADS_ENV: str(max(1, (os.cpu_count() or 1) // workers)), **(env or {})}
    env = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    procs: list[tuple[int, subprocess.Popen]] = []
    pumps: list[threading.Thread] = []
    for i, n in enumerate(shares(trials, workers)):
        wid = first_id + i
        p = subprocess.Popen([sys.executable, "-m", "tickertune", "tune",
                              *worker_argv(argv, n, wid)], env=env, text=True, bufsize=1,
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
    interrupted = False
    while True:
        try:
            codes = [p.wait() for _, p in procs]
            break
        except KeyboardInterrupt:
            # Each worker ends its trial at its next step, closes its runs and exits 130;
            # a second Ctrl-C stops them at once.
            interrupted = True
            for _, p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
    for t in pumps:
        t.join(timeout=5)
    for (wid, _), code in zip(procs, codes):
        if code:
            print(f"worker {wid} exited with code {code}", file=sys.stderr)
    if interrupted or 130 in codes:
        raise KeyboardInterrupt
    return next((c for c in codes if c), 0)
