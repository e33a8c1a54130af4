"""tinyasr: on-device speech recognition with memory-mapped .tasr models.

    from tinyasr import Recognizer
    print(Recognizer().transcribe("digits.wav").text)

Names are imported on first use, so ``import tinyasr`` (and ``tinyasr --help``)
does not pay for loading Numba.
"""

import importlib
import os
import sys

__version__ = "0.1.0"


def _prefer_avx512_blas_kernels():
    """Let OpenBLAS use its AVX-512 GEMM on AVX-512 CPUs it does not recognise (AMD Zen 4 / 5).

    OpenBLAS 0.3.x picks its AVX2 "Haswell" kernels on Zen 4 / 5, which halves the speed of
    every dense 1x1 convolution (measured 120 vs 235 GFLOP/s for 256x256x500 here).  The choice
    is made when numpy loads OpenBLAS, so this only helps when tinyasr is imported first (the
    CLI always is); a user's own OPENBLAS_CORETYPE always wins.
    """
    if "numpy" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            else:
                return
    except OSError:  # not Linux: nothing to detect, leave OpenBLAS alone
        return
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"


_prefer_avx512_blas_kernels()

_EXPORTS = {
    "load_model": "engine.offline",
    "set_num_threads": "engine.threads",
    "Recognizer": "pipeline.recognizer",
    "Result": "decoding.results",
    "Token": "decoding.results",
    "Word": "decoding.results",
    "Classification": "decoding.results",
    "FrameClassification": "decoding.results",
    "Segment": "decoding.results",
    "OnlineStream": "pipeline.online",
    "transcribe_long": "pipeline.long_form",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinyasr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
