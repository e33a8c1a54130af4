"""A CTC label sequence against log-probs: its Viterbi alignment (the beam search's token times,
tinyasr.decoding.beam.ctc_align) and its exact log-likelihood over every alignment (the beam search's final
rescoring, tinyasr.decoding.beam.PrefixSearch.finish).

Numba loops over frames x (2 labels + 1) states: the numpy version (a handful of whole-row operations a frame)
took a third of a beam search's time on the digits model.  Tested against enumerating every path
(tests/test_beam.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def viterbi_states(log_probs, labels):
    """The state (index into ``labels``, blanks between and around the tokens) of each frame on the most
    probable path through ``log_probs`` [frames, classes] (float64) that spells ``labels`` (int64)."""
    frames, states = log_probs.shape[0], labels.shape[0]
    best = np.full(states, -np.inf)
    moves = np.zeros((frames, states), dtype=np.int8)  # 0 stay, 1 from s - 1, 2 from s - 2
    best[0] = log_probs[0, labels[0]]
    if states > 1:
        best[1] = log_probs[0, labels[1]]
    for t in range(1, frames):
        for s in range(states - 1, -1, -1):  # high to low: best[s - 1], best[s - 2] still hold frame t - 1
            score, move = best[s], 0
            if s >= 1 and best[s - 1] > score:
                score, move = best[s - 1], 1
            # a token may follow the token before it directly when they differ (odd states are tokens)
            if s >= 2 and s % 2 == 1 and labels[s] != labels[s - 2] and best[s - 2] > score:
                score, move = best[s - 2], 2
            best[s] = score + log_probs[t, labels[s]]
            moves[t, s] = move
    state = states - 1
    if states > 1 and best[states - 2] > best[states - 1]:
        state = states - 2
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= moves[t, state]
    return path


@njit(cache=True)
def log_likelihood(log_probs, labels):
    """log P(labels | log_probs): the CTC forward algorithm over ``log_probs`` [frames, classes] (float64)
    and ``labels`` (int64, blanks between and around the tokens, as for viterbi_states)."""
    frames, states = log_probs.shape[0], labels.shape[0]
    alpha = np.full(states, -np.inf)
    alpha[0] = log_probs[0, labels[0]]
    if states > 1:
        alpha[1] = log_probs[0, labels[1]]
    for t in range(1, frames):
        for s in range(states - 1, -1, -1):  # high to low: alpha[s - 1], alpha[s - 2] still hold frame t - 1
            total = alpha[s]
            if s >= 1:
                total = _log_add(total, alpha[s - 1])
            if s >= 2 and s % 2 == 1 and labels[s] != labels[s - 2]:
                total = _log_add(total, alpha[s - 2])
            alpha[s] = total + log_probs[t, labels[s]]
    return _log_add(alpha[states - 1], alpha[states - 2]) if states > 1 else alpha[0]


@njit(cache=True)
def _log_add(a, b):
    if a < b:
        a, b = b, a
    return a if b == -np.inf else a + math.log1p(math.exp(b - a))
