"""What the trials ran on: CPU model and threads, GPUs when present.

Read once per process (the answers do not change) and attached to every trial run.
Nothing here imports torch: GPU facts come from nvidia-ml-py when it is installed,
or from torch only if the caller has already imported it.
"""

from __future__ import annotations

import functools
import os
import platform
import sys


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _nvml_gpus() -> list[dict[str, str]]:
    try:
        import pynvml  # nvidia-ml-py, the 'gpu' extra
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: nvml raises its own error types
        return []
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
        gpus.append({"name": name.decode() if isinstance(name, bytes) else str(name),
                     "memory_gb": f"{mem / 2**30:.1f}"})
    return gpus


def _torch_gpus() -> list[dict[str, str]]:
    torch = sys.modules.get("torch")  # only if already imported by the caller
    if torch is None or not torch.cuda.is_available():
        return []
    return [{"name": torch.cuda.get_device_name(i),
             "memory_gb": f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.1f}"}
            for i in range(torch.cuda.device_count())]


THREADS_ENV = "TICKERTUNE_THREADS"


def train_threads() -> int:
    """CPU threads one trial trains with: $TICKERTUNE_THREADS (set per worker by
    --workers), else all cores but one, which is left to the tuner and tracking writer."""
    env = os.environ.get(THREADS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) - 1)


def device_tags(threads: int | None = None) -> dict[str, str]:
    """Tags describing this machine: device.cpu_model, device.cpu_threads, device.gpu_*."""
    tags = {
        "device.cpu_model": cpu_model(),
        "device.cpu_threads": str(threads or os.cpu_count() or 1),
        "device.platform": platform.platform(terse=True),
    }
    gpus = _nvml_gpus() or _torch_gpus()
    if gpus:
        tags["device.gpu_count"] = str(len(gpus))
        tags["device.gpu_name"] = gpus[0]["name"]
        tags["device.gpu_memory_gb"] = gpus[0]["memory_gb"]
    return tags


def gpu_utilization(index: int = 0) -> float | None:
    """Current utilisation (%) of GPU `index` from nvidia-ml-py, None when unavailable."""
    if not _nvml_gpus():
        return None
    import pynvml

    try:
        return float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu)
    except Exception:  # noqa: BLE001 - a monitoring read must never fail a trial
        return None
