"""Keep the memory a CPU training step frees for the next step (glibc's ``mallopt``).

A training step on CPU allocates and frees the same large buffers every micro-batch
(activations, logits chunks, gradients; the tied 49152 x 576 embedding's gradient alone is
113 MB at SmolLM2-135M). glibc serves blocks above its mmap threshold (dynamic, 128 KiB to
32 MiB, and always above 32 MiB) with fresh ``mmap`` calls and returns them with ``munmap``,
and trims the heap's free top back to the system; each following step then faults every
page in again, zeroed by the kernel (in a VM, often at a few microseconds per page). Here
every block comes from the heap (no ``mmap``) and the heap is trimmed only when more than
~2 GiB lies free at its top, so a step reuses the previous step's memory. Measured on
SmolLM2-135M (2 cores, 4 x 4 rollouts): the kernel time of a GRPO update fell from 1.0-1.6 s
to 0.15-0.18 s, of an SDPO update from 0.35-1.5 s to 0.08-0.26 s (``benchmarks/vs_trl.py``
measures whole steps). The cost: freed memory stays in the process (resident, reused)
instead of going back to the system, so the resident size stays near its peak between
steps: over 15 steps it stayed at 3.80 GiB (GRPO) and 4.39 GiB (SDPO) after every update,
where glibc's default went up and down between 2.6 and 3.4 GiB (GRPO). A pattern that
would grow it without bound (a block re-allocated at the same size with a small object
allocated after it, so the freed block is never large enough for the next request) did
not show up in training.

Process-wide and irreversible within the process; the trainer applies it on CPU unless
``reuse_freed_memory: false``. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only a free top above ~2 GiB


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc serve every block from its heap and (almost) never trim it; True if applied.

    Once per process (cached). False where there is no glibc ``mallopt`` (macOS, musl,
    Windows) or glibc refused a value.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim_ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    # M_MMAP_MAX 0: no block gets its own mapping, however large (the threshold alone stops
    # at 32 MiB); the threshold is still set so that glibc's dynamic adjustment stays off
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    return trim_ok and mmap_ok and no_mmap
