"""The code version stamped on every run: package version plus git commit when known."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from tickertune import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """'0.1.0+g1a2b3c4' in a git checkout ('.dirty' when modified), else '0.1.0'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else __version__
