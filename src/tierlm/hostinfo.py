"""This machine's memory (and GPU memory where a GPU exists).

``memory_available_bytes()`` is used by the in-process llama.cpp backend's RAM check before a
model is loaded; keep its name and meaning.
"""

from __future__ import annotations

import os


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return out


def memory_total_bytes() -> int:
    info = _meminfo()
    if "MemTotal" in info:
        return info["MemTotal"]
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
