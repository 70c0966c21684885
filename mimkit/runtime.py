"""Process-wide settings that make training steps faster on CPUs.

glibc hands every allocation above its mmap threshold (at most 32 MiB) straight back to the kernel when it is
freed, so each step of a large model maps its activation buffers afresh and page-faults them in again: 0.8-3.9 M
minor faults a step for MAE-B at batch 32 on the project's machine (``shared/bench/official_cpu.md``).
:func:`keep_freed_memory` makes glibc keep freed memory in the heap for reuse instead. The process then holds
its peak memory until it exits, which is what a training run does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
"""``mallopt`` parameter numbers from glibc's ``malloc.h``."""

TOP_PAD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
OPT_OUT_VARIABLE = "MIMKIT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed memory to the kernel (no mmap for large blocks, no heap trimming).

    Returns whether the setting took effect: ``False`` off Linux, without glibc, or when the environment sets
    ``MIMKIT_KEEP_FREED_MEMORY=0``. The ``mimkit`` command calls it at start-up.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
