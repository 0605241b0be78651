"""What a measurement ran on: device, CPU model, core count and library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from . import __version__


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device) -> dict[str, Any]:
    """JSON-able description of the machine and software a result came from."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pacsim": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def one_line(device: torch.device) -> str:
    """Short human-readable form of :func:`describe`."""
    d = describe(device)
    where = d.get("gpu") or f"{d['cpu']}, {d['cpu_count']} cores, {d['torch_threads']} threads"
    return (f"{d['device']} ({where}); python {d['python']}, torch {d['torch']}, "
            f"pacsim {d['pacsim']}")
