"""Keep the memory a CPU training step frees for the next step (glibc's ``mallopt``).

A training step on CPU allocates and frees the same large buffers every micro-batch
(activations, logits chunks, gradients; the tied 49152 x 576 embedding's gradient alone is
113 MB at SmolLM2-135M). glibc serves blocks above its mmap threshold (dynamic, 128 KiB to
32 MiB, and always above 32 MiB) with fresh ``mmap`` calls and returns them with ``munmap``,
and trims the heap's free top back to the system; each following step then faults every
page in again, zeroed by the kernel (in a VM, often at a few microseconds per page). Here
every block comes from the heap (no ``mmap``) and the heap is trimmed only when more than
~2 GiB lies free at its top, so a step reuses the previous step's memory.

Measured by ``python benchmarks/allocator.py [--algo sdpo]`` (SmolLM2-135M, 2 cores,
4 x 4 rollouts, medians of steps 2..N): kernel time per GRPO update 2.19 -> 0.08 CPU-s and
the update 1.28x faster; per SDPO update 5.93 -> 0.13 CPU-s and 1.49x faster. The cost:
freed memory stays in the process (resident, reused) instead of going back to the system,
so the resident size stays near its peak between steps: 3.68 GiB after every GRPO update
(3.17 with glibc's default), SDPO 4.29 -> 4.35 GiB over 8 steps (3.75). A pattern that
would grow it without bound (a block re-allocated at the same size with a small object
allocated after it, so the freed block is never large enough for the next request) was
not seen: SDPO's 0.06 GiB over 8 steps is the most it grew.

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
