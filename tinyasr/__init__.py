"""tinyasr: on-device speech recognition with memory-mapped .tasr models.

    from tinyasr import Recognizer
    print(Recognizer().transcribe("digits.wav").text)

Names are imported on first use, so ``import tinyasr`` (and ``tinyasr --help``)
does not pay for loading Numba.  Importing sets no environment variable and no
thread pool: the thread policy is applied when the first model runs
(tinyasr/engine/threads.py).
"""

import importlib

__version__ = "0.1.0"


_EXPORTS = {
    "load_model": "engine.offline",
    "set_num_threads": "engine.threads",
    "Recognizer": "pipeline.recognizer",
    "BeamSearch": "decoding.specs",
    "Greedy": "decoding.specs",
    "Result": "decoding.results",
    "Token": "decoding.results",
    "Word": "decoding.results",
    "Classification": "decoding.results",
    "FrameClassification": "decoding.results",
    "Segment": "decoding.results",
    "OnlineStream": "pipeline.online",
    "transcribe_long": "pipeline.recognizer",
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
