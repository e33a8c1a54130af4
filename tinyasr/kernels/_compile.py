"""Build each kernel twice, serial and parallel, and pick one per call.

A kernel is written once as a factory ``make(loop)`` whose outer loop is ``loop(n)``.
``range`` gives the serial build: no thread pool, safe to call from many Python threads at
once, and the only build used at 1 thread.  ``prange`` gives the parallel build.  The closure
variable also keeps the two builds apart in Numba's on-disk cache, whose key is the
function's bytecode plus its closure contents (same qualname otherwise).
"""

from __future__ import annotations

from numba import njit, prange

from .. import threads


class SerialAndParallel:
    """A kernel with a serial and a parallel build, each compiled (or loaded from the cache) on first use.

    Compiling lazily keeps ``import tinyasr`` cheap: a dense model never pays for the sparse kernels, and a
    one-thread process never builds the parallel variants (cold compile of everything took ~30 s here).
    """

    def __init__(self, make, signature, options):
        self._make, self._signature, self._options = make, signature, options
        self._builds = {}
        self.__name__ = self.__qualname__ = make.__name__
        self.__doc__ = make.__doc__

    def _build(self, parallel: bool):
        build = self._builds.get(parallel)
        if build is None:
            kernel = self._make(prange if parallel else range)
            build = njit(self._signature, cache=True, parallel=parallel, **self._options)(kernel)
            self._builds[parallel] = build
        return build

    @property
    def serial(self):
        return self._build(False)

    @property
    def parallel(self):
        return self._build(True)

    def __call__(self, work, *args):
        with threads.parallel_region(work) as use_parallel:
            self._build(use_parallel)(*args)


def serial_and_parallel(signature, **options):
    """Decorator: ``make(range)`` and ``make(prange)`` compiled with ``signature`` (cached), lazily.

    Returns ``run(work, *args)``, which calls the parallel build when threads.py grants a parallel
    region for ``work`` (multiply-adds, or elements for elementwise kernels), else the serial one.
    """

    def build(make):
        return SerialAndParallel(make, signature, options)

    return build
