"""Kernel variants chosen per CPU by a short measurement at first use, cached beside Numba's cache.

LLVM picks the vector width, but how many accumulators fit in registers is the CPU's: a 4-row x 64-frame
dense tile is 16 AVX-512 registers and ran at 1.0x onnxruntime on Zen 5, yet needs 32 AVX2 registers, spills
on every step and ran at 0.36x on Zen 3.  So each tiled kernel family has a few compiled candidates; the
first call in a process times them on one small problem (a few ms once their builds are cached) and
remembers the fastest per host CPU and per version of the kernels' source file in ``tinyasr-tuning.json`` in
the family's Numba cache folder (a changed kernel is measured again, as Numba recompiles it).  The dense
tile shapes sum in the same order, so that choice changes speed only; the CSR variants (and the few-frame
kernel against BLAS) differ by float32 rounding.  Each variant gives the same result at any thread count.
On a busy machine a choice can be wrong by the noise (the variants measured here were within 10-20 % of
each other where that happened): delete the file to measure again.

A model run reads each layer's weights once, from beyond the core's caches, so a timing problem hands its kernels
a new copy of its weights each call (``Rotation``): on Zen 4, a 256 x 256 weight kept in L2 timed the 4x64 and 4x16
dense tiles alike at T = 64 (76 / 75 us) and BLAS at 86; read from L3, 84-92 / 88-101 and 103-115 us.  Sparse
weights are a tenth of that and stay in the caches between a model's runs: their kernels are timed on a chain of
layers instead (sparse._fastest_kernel).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from tinyasr.engine import threads

CACHE_FILE = "tinyasr-tuning.json"
# Part of every cached choice's key: raised when the way candidates are timed changes, so that choices made the
# old way are measured again (2: BLAS at the thread count tinyasr runs it with, threads.blas_as_run; 3: weights
# read from beyond the caches, Rotation).
METHOD = 3
# The weights a Rotation cycles through: past every core's L2 and a Raspberry Pi 5's shared L3 (2 MB)
ROTATION_BYTES = 8 << 20
ROUNDS = 7  # candidates are timed in turn, this many rounds of CALLS calls, each keeping its best (a busy machine)
CALLS = 5
_chosen: Dict[str, str] = {}


def host_key() -> str:
    """LLVM's name and feature string for this CPU: what the kernels were compiled for, so what their speed depends on."""
    import llvmlite.binding as llvm

    features = hashlib.sha256(_host_features().encode()).hexdigest()[:12]
    return f"{llvm.get_host_cpu_name()} {features}"


def host_has(feature: str) -> bool:
    """Whether LLVM compiles for a CPU with ``feature`` (its name, as "avx512f" or "f16c")."""
    return f"+{feature}" in _host_features().split(",")


@functools.cache
def _host_features() -> str:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().flatten()


def choices() -> Dict[str, str]:
    """{family: chosen variant} of the families measured or read so far in this process (for benchmarks)."""
    return dict(_chosen)


def cache_of(dispatcher) -> Tuple[Optional[Path], str]:
    """(the folder where Numba caches ``dispatcher``'s builds (beside the module, or Numba's fallback) or None,
    a digest of the source file it was compiled from): the last two arguments of ``fastest``."""
    folder = getattr(getattr(dispatcher, "_cache", None), "_cache_path", None)
    return None if folder is None else Path(folder), _file_digest(dispatcher.py_func.__code__.co_filename)


@functools.cache
def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or not JSON (our own cache: re-measure)
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict) -> None:
    """Best effort: a read-only install keeps the choice for this process only."""
    try:
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass


class Rotation:
    """Copies of a timing problem's weight arrays, ROTATION_BYTES in all, handed out in turn by each call: every
    candidate of a family shares one, so each call's weights were last read ROTATION_BYTES of weights ago.  Made at
    the first call: a process whose choice is read from the cache file never times, so never copies."""

    def __init__(self, *arrays):
        self._arrays = arrays
        self._copies: list = []
        self._next = 0

    def __call__(self) -> tuple:
        if not self._copies:
            count = max(2, -(-ROTATION_BYTES // max(1, sum(array.nbytes for array in self._arrays))))
            self._copies = [tuple(array.copy() for array in self._arrays) for _ in range(count)]
        copy = self._copies[self._next]
        self._next = (self._next + 1) % len(self._copies)
        return copy


def best_seconds(functions: Dict[str, Callable[[], None]], rounds: int, calls: int) -> Dict[str, float]:
    """{name: best thread CPU time of one call}: each function called once to compile and warm, then all in turn,
    ``rounds`` times ``calls`` calls each, so a busy spell hurts every candidate alike.  numpy's BLAS runs at the
    thread count tinyasr gives it (threads.blas_as_run): at more, its share of the work on other threads would not
    even show in this thread's CPU time."""
    with threads.blas_as_run():
        for function in functions.values():
            function()
        best = dict.fromkeys(functions, float("inf"))
        for _ in range(rounds):
            for name, function in functions.items():
                for _ in range(calls):
                    start = time.thread_time()
                    function()
                    best[name] = min(best[name], time.thread_time() - start)
    return best


def fastest(family: str, candidates: Dict[str, Callable[[], None]], cache_dir: Optional[Path], source: str = "") -> str:
    """The name of the fastest of ``candidates`` (name -> a call that runs it once) for ``family`` on this CPU.

    Measured once per CPU and ``source`` (the kernels' version: cache_of), thread CPU time, the best of ROUNDS x
    CALLS calls each, rounds interleaved; then read from cache_dir / CACHE_FILE, or from memory for the rest of
    the process.
    """
    if _chosen.get(family) in candidates:
        return _chosen[family]
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    key = f"{family} {sorted(candidates)} {host_key()} {source} method {METHOD}"
    entries = _read(path) if path is not None else {}
    choice = entries.get(key)
    if choice not in candidates:
        best = best_seconds(candidates, ROUNDS, CALLS)
        choice = min(best, key=best.get)
        if path is not None:
            _write(path, {**_read(path), key: choice})
    _chosen[family] = choice
    return choice
