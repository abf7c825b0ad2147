"""Which process, on which host: enough to tell a dead tickertune process from a live one."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host_id() -> str:
    """This host as seen by its processes: name, boot and PID namespace. Containers that
    share a host name, or a machine rebooted since, count as other hosts."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux
        pass
    return ":".join(parts)


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first); [] where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), '' where unknown: a pid can be reused."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def alive(pid: int, start: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return not start or len(fields) <= 19 or fields[19] == start
