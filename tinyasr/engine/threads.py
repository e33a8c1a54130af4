"""How many threads tinyasr computes with, and the policy for Numba's and BLAS's thread pools.

``TINYASR_NUM_THREADS`` is read once, at import; ``set_num_threads(n)`` changes it later.

Policy, chosen by measurement (benchmarks/bench_kernels.py on a 2-core AMD EPYC shared with
other jobs, load 4-6, so wall times vary 2x between runs; workload: 5 x (depthwise K33 +
pointwise 256x256 + bias + residual + Relu), T=1000; 5 runs x 3 rounds, ms):

    Numba 1 / BLAS 1:   7.7 - 21        Numba 1 / BLAS 2:   9.4 - 122
    Numba 2 / BLAS 1:   7.4 - 25        Numba 2 / BLAS 2:   5.8 - 96  (often 70-95)

* BLAS stays at 1 thread, whatever n.  OpenBLAS's workers spin (sched_yield) after each call,
  so a multi-threaded matmul followed by other work often runs 5-10x slower; alone, a
  256x256x1000 matmul took 0.6 ms at 2 threads and 1.1 ms at 1.  The pools fight, as
  kernels.md warned.  NOTE: this sets numpy's OpenBLAS to 1 thread for the whole process.
* Default 1 thread: Numba 2 / BLAS 1 was not reliably faster than serial here, and at 1 thread
  only the serial kernel builds run: no pool, deterministic, thread-safe.  On a dedicated
  multi-core board opt in with ``TINYASR_NUM_THREADS=n``; the Numba kernels then run in parallel
  (results stay bit-identical: each output row is computed by one thread).
* ``OMP_WAIT_POLICY=PASSIVE`` is set (unless the user set it) before Numba starts its OpenMP
  pool, so idle Numba workers sleep instead of spinning: with the default active wait the stack
  at Numba 2 / BLAS 1 took 41-102 ms, with passive 9-20 ms (same session).  It takes effect only
  if no OpenMP runtime was loaded before (torch loads one; the runtime's dependencies do not),
  and it also applies to OpenMP libraries loaded later in the process.

BLAS control: we cannot depend on threadpoolctl, so a small ctypes helper finds every OpenBLAS
library mapped into the process (``/proc/self/maps``, else numpy's ``numpy.libs`` / ``.dylibs``
folder) and calls its ``*set_num_threads*`` symbol (numpy 2.x wheels:
``scipy_openblas_set_num_threads64_``).  If none is found BLAS keeps its own setting and
``blas_threads_controllable()`` says False.

Parallel kernels: at most one Numba parallel kernel runs at a time in the process; a call that
finds the pool busy (another Python thread is in a parallel kernel) runs the serial build of the
same kernel instead.  So one Model can serve several Python threads without oversubscribing the
cores, with any Numba threading layer (workqueue is not thread-safe).
"""

from __future__ import annotations

import ctypes
import glob
import numbers
import os
import threading
import warnings
from contextlib import contextmanager

import numba

from tinyasr.errors import TinyASRError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before Numba first loads its OpenMP layer

ENV_VAR = "TINYASR_NUM_THREADS"
DEFAULT_THREADS = 1
BLAS_THREADS = 1  # at every setting: see the module docstring
# Below this much work (multiply-adds) a kernel runs serially.  A parallel launch costs 5-20 us,
# the time the serial depthwise kernel takes for ~2^19 multiply-adds (C256 K33 T=64: 60 us).
# An estimate: on the shared 2-core machine the parallel build never won reliably at any size.
PARALLEL_MIN_WORK = 1 << 19
# The register-tiled kernels do many more multiply-adds per microsecond than that depthwise loop, so they
# count theirs in units of this many: measured on 2 threads (256-512 channels), the dense pointwise kernel
# first gained from the parallel build at 8-17 M multiply-adds, the sparse ones at 3-13 M non-zeros x frames
# (below, the second thread cost up to 2.4x the serial time).
POINTWISE_MACS_PER_WORK = 24
SPARSE_MACS_PER_WORK = 12

_SET_SYMBOLS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_SYMBOLS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


# ---------------------------------------------------------------------------------------------
# BLAS (OpenBLAS via ctypes)
# ---------------------------------------------------------------------------------------------


def _openblas_paths():
    """Paths of OpenBLAS libraries loaded in this process (Linux maps), else bundled with numpy."""
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before we look for it)

    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    if not paths:
        numpy_dir = os.path.dirname(numpy.__file__)
        for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy/.libs/*openblas*"):
            paths.extend(sorted(glob.glob(os.path.join(numpy_dir, pattern))))
    return paths


def _find_blas_controls():
    """[(set_fn, get_fn, library)] for each OpenBLAS found; empty when none can be controlled."""
    controls = []
    for path in _openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SET_SYMBOLS if hasattr(lib, s)), None)
        getter = next((getattr(lib, s) for s in _GET_SYMBOLS if hasattr(lib, s)), None)
        if setter is None or getter is None:
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], None
        getter.argtypes, getter.restype = [], ctypes.c_int
        controls.append((setter, getter, lib))
    return controls


_BLAS = _find_blas_controls()


def blas_threads_controllable() -> bool:
    """True when tinyasr found numpy's OpenBLAS and can set its thread count."""
    return bool(_BLAS)


def blas_num_threads():
    """The thread count of the (first) OpenBLAS found, or None when it cannot be read."""
    return _BLAS[0][1]() if _BLAS else None


def blas_core_name():
    """The CPU kernel set OpenBLAS chose (e.g. "Haswell", "SkylakeX"), or None; for benchmarks and bug reports.

    OpenBLAS 0.3.31 picks "Haswell" (AVX2) on AMD Zen 5, which halves matmul speed there; setting
    OPENBLAS_CORETYPE=SkylakeX before numpy is imported restores it.
    """
    for _, _, lib in _BLAS:
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            if hasattr(lib, symbol):
                getter = getattr(lib, symbol)
                getter.argtypes, getter.restype = [], ctypes.c_char_p
                return getter().decode()
    return None


def _set_blas_threads(n: int) -> None:
    for setter, _, _ in _BLAS:
        setter(n)


# ---------------------------------------------------------------------------------------------
# Numba and the public setting
# ---------------------------------------------------------------------------------------------

_num_threads = DEFAULT_THREADS
_parallel_lock = threading.Lock()


def _numba_threads(n: int) -> int:
    """Numba cannot exceed the pool size fixed when it was imported (NUMBA_NUM_THREADS)."""
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def set_num_threads(n: int) -> None:
    """Compute with ``n`` threads from now on: Numba kernels use n, BLAS is kept at BLAS_THREADS.

    ``n`` above Numba's pool size (the core count, or NUMBA_NUM_THREADS) is capped to it.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise TinyASRError(f"number of threads must be a positive integer, got {n!r}")
    n = _numba_threads(int(n))
    numba.set_num_threads(n)
    _set_blas_threads(BLAS_THREADS)
    _num_threads = n


def get_num_threads() -> int:
    """The thread count tinyasr computes with."""
    return _num_threads


def serial_only(work: int) -> bool:
    """True when a kernel doing ``work`` runs serially whoever holds the pool: at 1 thread, or for small work."""
    return _num_threads == 1 or work < PARALLEL_MIN_WORK


@contextmanager
def parallel_region(work: int):
    """Yield True when the caller may run a Numba parallel kernel doing ``work`` multiply-adds (or elements).

    False at 1 thread, for small work, or while another Python thread holds the pool.
    """
    if serial_only(work) or not _parallel_lock.acquire(blocking=False):
        yield False
        return
    try:
        if numba.get_num_threads() != _num_threads:  # Numba's setting is per Python thread
            numba.set_num_threads(_num_threads)
        yield True
    finally:
        _parallel_lock.release()


def _threads_from_env() -> int:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return DEFAULT_THREADS
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        warnings.warn(f"{ENV_VAR}={value!r} is not a positive integer; using {DEFAULT_THREADS} thread(s)")
        return DEFAULT_THREADS
    return n


set_num_threads(_threads_from_env())
