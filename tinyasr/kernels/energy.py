"""The energy VAD's per-frame arithmetic (tinyasr.pipeline.vad.EnergyVAD): the noise floor as a running
percentile of frame levels, and the speech probability from the level's margin over it.

A stream feeds the VAD 100 ms at a time, five frames, so numpy's whole-array calls (sliding windows, a
sort of a [frames, window] array, NaN masks) cost more in call overhead than in arithmetic: a third of
the detector's time per chunk, and the detector is a fifth of a stream's compute.  One loop per call here.
Tested against ``np.nanpercentile`` over the same windows (tests/test_vad.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def speech_probabilities(padded, window, q, snr_db, min_db):
    """``padded``: frame levels in dB (float64), NaN where a window slot lies before anything was heard; the
    last ``len(padded) - window + 1`` entries are the frames to judge.  Frame i's floor is the ``q``-th
    percentile (linear interpolation, NaNs left out) of the ``window`` levels ending at it; its probability
    is a logistic of ``(level - max(floor + snr_db, min_db)) / 2``."""
    count = padded.shape[0] - window + 1
    probs = np.empty(max(count, 0))
    values = np.empty(window)
    for i in range(count):
        n = 0
        for k in range(i, i + window):
            if not math.isnan(padded[k]):
                values[n] = padded[k]
                n += 1
        ordered = np.sort(values[:n])
        position = q / 100.0 * (n - 1)
        low = int(math.floor(position))
        high = min(low + 1, n - 1)
        floor = ordered[low] + (position - low) * (ordered[high] - ordered[low])
        margin = padded[i + window - 1] - max(floor + snr_db, min_db)
        probs[i] = 1.0 / (1.0 + math.exp(-margin / 2.0))
    return probs
