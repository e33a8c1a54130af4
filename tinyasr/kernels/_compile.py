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


def serial_and_parallel(signature, **options):
    """Decorator: compile ``make(range)`` and ``make(prange)`` with ``signature`` (cached).

    Returns ``run(work, *args)``, which calls the parallel build when threads.py grants a parallel
    region for ``work`` (multiply-adds, or elements for elementwise kernels), else the serial one.
    """

    def build(make):
        serial = njit(signature, cache=True, **options)(make(range))
        parallel = njit(signature, cache=True, parallel=True, **options)(make(prange))

        def run(work, *args):
            with threads.parallel_region(work) as use_parallel:
                (parallel if use_parallel else serial)(*args)

        run.serial, run.parallel = serial, parallel
        run.__name__ = run.__qualname__ = make.__name__
        run.__doc__ = make.__doc__
        return run

    return build
