"""This machine's memory (and GPU memory where a GPU exists).

``memory_available_bytes()`` is used by the in-process llama.cpp backend's RAM check before a
model is loaded; keep its name and meaning.

RAM comes from ``/proc/meminfo`` (Linux), else ``sysctl`` (macOS), else ``os.sysconf``. GPU
memory comes from ``nvidia-smi`` only when that binary exists; without it there are simply no
GPUs, and no error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except (OSError, ValueError):
        pass
    return out


def _sysctl(name: str) -> int | None:
    """A numeric ``sysctl`` value (macOS, BSD), or None."""
    exe = shutil.which("sysctl")
    if exe is None or sys.platform == "linux":
        return None
    try:
        out = subprocess.run(
            [exe, "-n", name], capture_output=True, text=True, timeout=2, check=True
        ).stdout
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def memory_total_bytes() -> int:
    info = _meminfo()
    if "MemTotal" in info:
        return info["MemTotal"]
    mac = _sysctl("hw.memsize")
    if mac is not None:
        return mac
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_available_bytes() -> int:
    """Memory a new allocation can use without swapping (Linux ``MemAvailable``)."""
    info = _meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return memory_total_bytes()


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_pct: float | None = None


_NVIDIA_QUERY = "index,name,memory.total,memory.free,utilization.gpu"


def gpus(nvidia_smi: str | None = None) -> list[Gpu]:
    """GPUs that ``nvidia-smi`` reports (memory in bytes); empty when there is none."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={_NVIDIA_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of ``index, name, memory.total [MiB], memory.free [MiB], utilization [%]``."""
    found = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            util = float(parts[4]) if len(parts) > 4 and parts[4] not in ("", "[N/A]") else None
            found.append(
                Gpu(
                    index=int(parts[0]),
                    name=parts[1],
                    memory_total_bytes=int(float(parts[2]) * 1024**2),
                    memory_free_bytes=int(float(parts[3]) * 1024**2),
                    utilization_pct=util,
                )
            )
        except ValueError:
            continue
    return found


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A snapshot of this machine's memory, for ``tierlm doctor`` and fit checks."""

    memory_total_bytes: int
    memory_available_bytes: int
    cpu_count: int
    gpus: list[Gpu] = field(default_factory=list)

    @property
    def memory_available_gb(self) -> float:
        return self.memory_available_bytes / GIB

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory_total_gb"] = round(self.memory_total_bytes / GIB, 2)
        d["memory_available_gb"] = round(self.memory_available_gb, 2)
        return d


def snapshot() -> HostInfo:
    return HostInfo(
        memory_total_bytes=memory_total_bytes(),
        memory_available_bytes=memory_available_bytes(),
        cpu_count=os.cpu_count() or 1,
        gpus=gpus(),
    )


def fits(needed_bytes: int, *, headroom: float = 0.9) -> bool:
    """Whether a model needing ``needed_bytes`` fits in the RAM available now."""
    return needed_bytes <= memory_available_bytes() * headroom
