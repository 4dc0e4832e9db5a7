"""flixrec: neural collaborative filtering on Netflix-Prize-format and MovieLens ratings."""

__version__ = "0.1.0"

import os as _os

# PyTorch's OpenMP threads otherwise spin while waiting; on a small shared machine (or beside
# another busy process) that made CPU training 30x slower in our measurements. Must be set
# before torch is first imported; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A training step allocates and frees tensors of a few MB to a few tens of MB. By default
    glibc serves those with fresh mmaps or trims them off the heap when freed, so every step
    page-faults its memory in again: at batch 8192 on ML-100K that was ~0.25 of the CPU time
    in the kernel, and 1.25x the steps/s once turned off (README, Configuration groups).
    Blocks over 32 MB still get their own mmap and are returned when freed; up to 256 MB of
    free space may stay at the top of a heap. Skipped where it cannot apply (not Linux glibc)
    and when the user tuned malloc (any MALLOC_* variable, or glibc.malloc tunables in
    GLIBC_TUNABLES): their setting wins, as with OMP_WAIT_POLICY above.
    """
    import ctypes
    import sys

    if (not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in _os.environ)
            or "glibc.malloc." in _os.environ.get("GLIBC_TUNABLES", "")):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # both or neither: fixing one turns off glibc's adjustment of the other
    if mallopt(m_mmap_threshold, 32 << 20):  # glibc's maximum on 64-bit; refused on 32-bit
        mallopt(m_trim_threshold, 256 << 20)


_keep_freed_memory()
