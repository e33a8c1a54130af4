"""Build each kernel twice, serial and parallel, and pick one per call; scratch that stays in registers.

A kernel is written once as a factory ``make(loop)`` whose outer loop is ``loop(n)``.
``range`` gives the serial build: no thread pool, safe to call from many Python threads at
once, and the only build used at 1 thread.  ``prange`` gives the parallel build.  The closure
variable also keeps the two builds apart in Numba's on-disk cache, whose key is the
function's bytecode plus its closure contents (same qualname otherwise).
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyasr.engine import threads

TILE = 64  # frames per register tile: 4 AVX-512 (8 AVX2, 16 NEON) registers per output row


@intrinsic
def stack_buffer(typingctx, size):
    """A float32 pointer to ``size`` (a literal) floats on the stack of the calling function (one per thread
    in a parallel loop body): scratch that LLVM can keep in registers, as a stack slot aliases no argument
    (Numba cannot mark array arguments noalias).  Wrap it with ``numba.carray(ptr, (size,))``."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, llvm_ir.ArrayType(llvm_ir.FloatType(), count))
        return builder.bitcast(slot, llvm_ir.PointerType(llvm_ir.FloatType()))

    return types.CPointer(types.float32)(size), codegen


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
        if threads.serial_only(work):  # checked first: no context manager on the (streaming) fast path
            (self._builds.get(False) or self._build(False))(*args)
            return
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
