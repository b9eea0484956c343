"""What a benchmark report says about the machine and the software it ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("mner", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "tensorrt", "pytorch-crf",
            "opencv-python-headless", "tokenizers")  # fmt: skip


def _cpuinfo(key: str) -> str | None:
    """The first /proc/cpuinfo value of ``key`` ("model name", "flags"), or None (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name (nvidia-smi), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return "; ".join(lines) or None


def machine_facts(device: str = "cpu") -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    simd = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if flag in cpu_flags()]
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "simd": simd,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu_name(),
        "device": device,
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
    }
