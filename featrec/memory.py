"""How a training process uses glibc's allocator: memory that stays flat over hundreds of
epochs without paying the kernel at every step (bench/RESULTS.md, "allocator").

Batches change shape at every step (window length, masked slots), so activations of ever
different sizes are allocated and freed thousands of times an epoch. Two failure modes:

* glibc's defaults raise the mmap threshold each time a large mmapped block is freed (up to
  32 MiB) and return the heap's top to the OS past a trim threshold that follows it: blocks
  of varying size then fragment the heap, which only grows (an ML-1M run peaked at 5 GiB).
* a threshold pinned low (1 MiB, featrec's earlier fix) gives every activation its own
  mmap: memory goes back to the OS at every free and comes back as fresh zeroed pages, a
  minor page fault per 4 KiB (~38% of an ML-1M run's CPU time in the kernel).

``arena`` (the default) keeps activations in one heap that is reused step after step: the
mmap threshold fixed high (no dynamic adjustment; only blocks past it, such as the item
logits of a huge catalog, get their own mapping), the top of the heap kept instead of
trimmed after every free, and growth in large steps; at the end of each epoch
:func:`release_free_memory` hands the free pages back, so what fragmentation an epoch
leaves does not carry over. ``pin`` is the earlier 1 MiB pin; ``glibc`` leaves glibc's
defaults. Chosen by ``FEATREC_MALLOC``; left alone where the user tuned glibc already
(``MALLOC_*_`` variables or ``GLIBC_TUNABLES``) and where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MIB = 1 << 20
POLICIES: dict[str, dict[int, int]] = {
    "arena": {M_MMAP_THRESHOLD: 256 * MIB, M_TRIM_THRESHOLD: 512 * MIB, M_TOP_PAD: 64 * MIB},
    "pin": {M_MMAP_THRESHOLD: 1 * MIB},
    "glibc": {},
}
DEFAULT_POLICY = "arena"
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to do
        return None
    return libc if hasattr(libc, "mallopt") else None


def allocator_policy() -> str:
    """The policy ``FEATREC_MALLOC`` names (default ``arena``); an unknown name is an error
    a user can act on, not a silent default."""
    from featrec.errors import FeatrecError

    name = os.environ.get("FEATREC_MALLOC", DEFAULT_POLICY) or DEFAULT_POLICY
    if name not in POLICIES:
        raise FeatrecError(f"FEATREC_MALLOC: expected one of {', '.join(POLICIES)}; got {name!r}")
    return name


def tune_allocator(policy: str | None = None) -> bool:
    """Apply an allocator policy to this process (see the module's docstring). Returns
    whether anything was set: False where the user's own glibc settings win, for ``glibc``
    and off glibc."""
    policy = policy or allocator_policy()
    user_set = any(name in os.environ for name in _USER_SETTINGS)
    if user_set or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _libc()
    if libc is None or not POLICIES[policy]:
        return False
    applied = all(libc.mallopt(param, value) for param, value in POLICIES[policy].items())
    log.debug("allocator policy %s applied: %s", policy, applied)
    return applied


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def heap_stats() -> dict[str, int] | None:
    """glibc's heap statistics (``mallinfo2``), in bytes: ``arena`` (the heap's size),
    ``uordblks`` (in use), ``hblkhd`` (in mmapped blocks), ...; None where not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {name: getattr(info, name) for name, _ in _MallInfo2._fields_}


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``), once an epoch.

    Without it a training process on ML-1M grew by ~45 MB per epoch (4.9 GB resident after
    44 epochs, 0.65 GB right after one ``malloc_trim``): nothing leaked, it was never
    returned. The pages it frees fault in again once in the next epoch, not at every step.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB (0.0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux
