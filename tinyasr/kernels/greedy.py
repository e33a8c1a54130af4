"""The greedy CTC decoder's loops over frames: each run's confidence, a stream's new frames (runs, token frames)
and its coverage score's settling (tinyasr.decoding.ctc, tinyasr.decoding.ctc_partial).

A stream's partial result runs these after every graph run, when the graph has pushed the decoder's code and data
out of the caches: there each numpy call cost 3-15 us, and its ~40 calls a partial (slices, nonzero, searchsorted,
reduceat, a growing array's copies) took 70-200 us of a chunk (AMD EPYC Zen 1, digits / causal QuartzNet 5x5);
each kernel here is one call.  Offline decoding uses the same kernels, so that a partial result and the offline
result agree to the bit (tests/test_streaming.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import float64, int64


@njit(float64(float64[:], int64, int64), cache=True)
def run_confidence(frame_scores, first, stop):
    """exp of the mean of frame_scores[first:stop] (a run's frames' log-probs), summed in frame order."""
    total = 0.0
    for t in range(first, stop):
        total += frame_scores[t]
    return np.exp(total / (stop - first))


@njit(float64[::1](float64[::1], int64[::1], int64[::1]), cache=True)
def run_confidences(frame_scores, firsts, stops):
    """run_confidence of each run [firsts[i], stops[i])."""
    out = np.empty(firsts.shape[0])
    for i in range(firsts.shape[0]):
        out[i] = run_confidence(frame_scores, firsts[i], stops[i])
    return out


@njit(cache=True)
def extend_frames(log_probs, best, blank, frame_seconds, labels, first, top, centres, centre_count, ends):
    """A stream's new frames (log_probs [n, classes], best [n]) appended from frame ``first``: labels[first + t] =
    best[t], top[first + t] = their log-prob, the centres (seconds) of the token frames from
    centres[centre_count], and in ``ends`` each frame where a run of equal labels begins (its predecessor's end).
    Returns (centre count, how many ends, the last token frame or -1)."""
    n_ends = 0
    last_token = -1
    for t in range(best.shape[0]):
        at = first + t
        label = best[t]
        labels[at] = label
        top[at] = log_probs[t, label]
        if label != blank:
            centres[centre_count] = (at + 0.5) * frame_seconds
            centre_count += 1
            last_token = at
        if at > 0 and label != labels[at - 1]:
            ends[n_ends] = at
            n_ends += 1
    return centre_count, n_ends, last_token


@njit(cache=True)
def settle_coverage(flags, flags_seen, flag_seconds, pending, pending_count, tokens, reach, horizon, settle, counted):
    """The coverage score's bookkeeping (GreedyPartial._score): the centres of the new speech frames (``flags``,
    one bool per detector frame after the ``flags_seen`` already looked at) appended to pending[pending_count:];
    then, with ``settle`` and any speech frame at all (``counted`` earlier ones left ``pending``), each pending
    centre within ``reach`` (+1e-9) of a token frame's centre (``tokens``, ascending) counts as covered and one
    before ``horizon`` as never covered, and both leave ``pending``.  Returns (pending count, covered, uncovered,
    every speech frame so far)."""
    for i in range(flags.shape[0]):
        if flags[i]:
            pending[pending_count] = (i + flags_seen + 0.5) * flag_seconds
            pending_count += 1
    total = counted + pending_count
    if not settle or total == 0:
        return pending_count, 0, 0, total
    covered = uncovered = kept = 0
    at = 0  # tokens[at - 1] < centre <= tokens[at]: np.searchsorted's left side, the centres ascending
    last = tokens.shape[0] - 1
    for i in range(pending_count):
        centre = pending[i]
        near = False
        if last >= 0:
            while at <= last and tokens[at] < centre:
                at += 1
            nearest = min(abs(centre - tokens[max(at - 1, 0)]), abs(tokens[min(at, last)] - centre))
            near = nearest <= reach + 1e-9
        if near:
            covered += 1
        elif centre < horizon:
            uncovered += 1
        else:
            pending[kept] = centre
            kept += 1
    return kept, covered, uncovered, total
