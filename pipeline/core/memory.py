"""Handing freed memory back to the system between the large phases of a job.

glibc keeps memory that Python and torch free in its heap for reuse, and raises its mmap threshold
after each large free, so blocks of a few MB to 32 MB stay resident after the tensors are gone. A
job that frees one large working set (a coreset's copies of every patch) and then builds another
(the held-out maps of every reference) holds both in its resident set unless the first is handed
back in between. ``malloc_trim`` does that; elsewhere than glibc this does only a garbage collection.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys


def release_freed_memory() -> None:
    """Collect garbage and return the heap's free pages to the system (glibc's ``malloc_trim``)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
