"""How many threads tinyasr computes with, and the policy for Numba's and BLAS's thread pools.

Importing tinyasr changes nothing in the process: the policy is applied once, at the first model run
(:func:`ensure_configured`, called by both engines) or an explicit :func:`set_num_threads`, and
``TINYASR_NUM_THREADS`` is read then.  Until then kernels called directly run serially.

* Numba: n threads, default 1 (serial builds only: no pool started, deterministic, thread-safe); opt in with
  ``TINYASR_NUM_THREADS=n`` on a dedicated multi-core board.  Results are bit-identical at any n >= 2, and at
  n = 1 as well except on CPUs where numpy's BLAS measured faster than the dense pointwise tile kernel
  (kernels/pointwise.prefer_blas): a run at 1 thread then uses BLAS for those convs, one at more threads the
  tiles where the conv is big enough to be split (BLAS runs at one thread), and the two differ by float32
  rounding (~1e-6 relative).
* BLAS: numpy's BLAS is set to one thread from the first run on, for the whole process, because a Numba kernel
  that follows a multi-threaded OpenBLAS call runs several times slower while OpenBLAS's idle workers spin.
  Not scoped to each run: that would not stop the slowdown (an app's own multi-threaded call still leaves
  the workers spinning before the next run), and ``threadpool_limits`` costs about as much as a streaming
  chunk.  An app may raise it again afterwards; tinyasr does not reset it.  BLAS libraries are found with
  threadpoolctl, else by ctypes (the OpenBLAS mapped into the process); where numpy bundles its own BLAS
  only that one is set, not scipy's or torch's.
* OpenMP (Numba's ``omp`` layer, libgomp): between parallel regions the workers spin, then sleep.  libgomp's
  default spins up to 300 000 rounds (milliseconds), stealing a core from other jobs on a busy machine;
  ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once, but waking a sleeping worker costs 15-35 us per region, against
  ~3 us when it still spins, and a 10 s QuartzNet-like run has ~75 regions with 10-300 us between them.  So the
  ``tinyasr`` command sets ``GOMP_SPINCOUNT=WORKER_SPIN_COUNT`` (~0.1-0.3 ms of spinning on Zen 3) unless the
  user chose a wait policy or spin count: 2 threads ran that encoder 1.54-1.68x (dense) and 1.58-1.77x (90 %
  sparse) faster than 1 thread on an idle machine, against 1.19-1.58x and 1.49-1.65x with PASSIVE.  On a
  machine busy with other jobs a second thread loses under either (0.3-0.9x), which is why 1 is the default.
  A library must not set it; an app running n > 1 threads should, before Numba starts its pool.

Numbers, and the CPU they were measured on: benchmarks/results/threads.md.

Parallel kernels: at most one Numba parallel kernel runs at a time in the process; a call that finds the pool
busy (another Python thread is in a parallel kernel) runs the serial build of the same kernel instead.  So one
Model can serve several Python threads without oversubscribing the cores, with any Numba threading layer.
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

ENV_VAR = "TINYASR_NUM_THREADS"
DEFAULT_THREADS = 1
BLAS_THREADS = 1  # at every setting: see the module docstring
WORKER_SPIN_COUNT = 10_000  # GOMP_SPINCOUNT the tinyasr command sets (the module docstring)
# Below this much work a kernel runs serially.  Work is counted in depthwise multiply-adds, the slowest per
# multiply-add of the kernels (60-130 ps each on Zen 3, 1 thread); the others scale theirs by how many of their
# own take as long: the dense register tiles ~3 (21-25 ps), the sparse kernels ~1 (60-90 ps per non-zero x frame).
# Measured on an idle 2-core AMD EPYC (Zen 3) with the workers spinning between regions (the tinyasr command's
# setting, below): a 2-thread launch costs ~3 us, yet a kernel alone on 2 threads only gained from 100-150 us of
# serial work (T = 256 at 256 channels), since the second core must first fetch the inputs from the first
# core's cache; inside a model, where consecutive layers split time alike, from less.  2^20 units is ~70-130 us.
# (benchmarks/results/threads.md).
PARALLEL_MIN_WORK = 1 << 20
POINTWISE_MACS_PER_WORK = 3
SPARSE_MACS_PER_WORK = 1

# ---------------------------------------------------------------------------------------------
# BLAS: threadpoolctl's controllers, else OpenBLAS by ctypes
# ---------------------------------------------------------------------------------------------

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
_CORENAME_SYMBOLS = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename")


class _CtypesOpenBLAS:
    """One OpenBLAS driven by ctypes, with the names of threadpoolctl's controllers (filepath, num_threads,
    set_num_threads, architecture) so that the rest of this module does not care which found it."""

    def __init__(self, filepath: str, setter, getter, corename):
        self.filepath, self._set, self._get = filepath, setter, getter
        self.architecture = corename().decode() if corename is not None else None

    @property
    def num_threads(self) -> int:
        return self._get()

    def set_num_threads(self, n: int) -> None:
        self._set(n)

    @classmethod
    def load(cls, path: str):
        """The library at ``path`` if it exports OpenBLAS's thread calls, else None."""
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return None
        setter = next((getattr(lib, s) for s in _SET_SYMBOLS if hasattr(lib, s)), None)
        getter = next((getattr(lib, s) for s in _GET_SYMBOLS if hasattr(lib, s)), None)
        if setter is None or getter is None:
            return None
        corename = next((getattr(lib, s) for s in _CORENAME_SYMBOLS if hasattr(lib, s)), None)
        setter.argtypes, setter.restype = [ctypes.c_int], None
        getter.argtypes, getter.restype = [], ctypes.c_int
        if corename is not None:
            corename.argtypes, corename.restype = [], ctypes.c_char_p
        return cls(path, setter, getter, corename)


def _openblas_paths(numpy_dir: str):
    """Paths of OpenBLAS libraries loaded in this process (Linux maps), else those bundled with numpy."""
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
        for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", ".libs/*openblas*"):
            paths.extend(sorted(glob.glob(os.path.join(numpy_dir, pattern))))
    return paths


def _find_blas():
    """The BLAS libraries tinyasr sets: numpy's own when numpy bundles one, else every BLAS loaded."""
    import numpy  # loaded by now (a model ran); its BLAS is the one tinyasr's matmuls use

    numpy_dir = os.path.realpath(os.path.dirname(numpy.__file__))
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        libraries = [lib for lib in map(_CtypesOpenBLAS.load, _openblas_paths(numpy_dir)) if lib is not None]
    else:
        libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    bundled = (numpy_dir + os.sep, numpy_dir + ".libs" + os.sep)
    own = [lib for lib in libraries if os.path.realpath(lib.filepath).startswith(bundled)]
    return own or libraries


_blas = None  # found on first use: finding it imports numpy and threadpoolctl and scans the process
_blas_lock = threading.Lock()


def _blas_libraries():
    global _blas
    with _blas_lock:
        if _blas is None:
            _blas = _find_blas()
    return _blas


def blas_threads_controllable() -> bool:
    """True when tinyasr found numpy's BLAS and can set its thread count."""
    return bool(_blas_libraries())


def blas_num_threads():
    """The thread count of the (first) BLAS found, or None when it cannot be read."""
    libraries = _blas_libraries()
    return libraries[0].num_threads if libraries else None


def blas_core_name():
    """The CPU kernel set the BLAS chose (e.g. "Haswell", "SkylakeX"), or None; for benchmarks and bug reports."""
    return next((lib.architecture for lib in _blas_libraries() if getattr(lib, "architecture", None)), None)


def _set_blas_threads(n: int) -> None:
    for lib in _blas_libraries():
        lib.set_num_threads(n)


@contextmanager
def blas_as_run():
    """BLAS at BLAS_THREADS inside the block, as tinyasr runs it, and back to what it was after: for a measurement
    that times numpy's matmul against a kernel before the first run applied the policy (kernels/tuning.py).
    Timed with OpenBLAS's 2 threads (and the calling thread's CPU time), a 256 x 256 matmul at T = 64 measured
    83 GMAC/s against the tile kernel's 54, and the choice was kept for the CPU, while at one thread it runs at
    45 (Zen 4)."""
    libraries = _blas_libraries()
    before = [lib.num_threads for lib in libraries]
    _set_blas_threads(BLAS_THREADS)
    try:
        yield
    finally:
        for lib, n in zip(libraries, before):
            lib.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Numba and the public setting
# ---------------------------------------------------------------------------------------------

_num_threads = DEFAULT_THREADS
_configured = False  # True once the first run or set_num_threads applied the policy
_configure_lock = threading.Lock()
_parallel_lock = threading.Lock()


def _numba_threads(n: int) -> int:
    """Numba cannot exceed the pool size fixed when it was imported (NUMBA_NUM_THREADS)."""
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


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


def ensure_configured() -> None:
    """Apply the policy once, at the first model run: ``TINYASR_NUM_THREADS`` threads, BLAS at BLAS_THREADS.

    A no-op afterwards (one flag test), and after an explicit :func:`set_num_threads`, which wins.
    """
    global _num_threads, _configured
    if _configured:
        return
    with _configure_lock:
        if not _configured:
            _set_blas_threads(BLAS_THREADS)
            _num_threads = _numba_threads(_threads_from_env())  # Numba's own count is set per parallel region
            _configured = True


def set_num_threads(n: int) -> None:
    """Compute with ``n`` threads from now on: Numba kernels use n, BLAS is kept at BLAS_THREADS.

    ``n`` above Numba's pool size (the core count, or NUMBA_NUM_THREADS) is capped to it.
    """
    global _num_threads, _configured
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise TinyASRError(f"number of threads must be a positive integer, got {n!r}")
    n = _numba_threads(int(n))
    with _configure_lock:
        numba.set_num_threads(n)
        _set_blas_threads(BLAS_THREADS)
        _num_threads = n
        _configured = True


def get_num_threads() -> int:
    """The thread count tinyasr computes with (DEFAULT_THREADS until the first run or set_num_threads)."""
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
