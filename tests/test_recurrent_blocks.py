"""The recurrent kernels' column-blocked R (blocks of 8 gate rows x 1 column, kernels/recurrent.column_blocks)
against the dense path on the same block-pruned R and against the float64 numpy references: LSTM (both
directions, sequence lengths, torch's projection) and GRU (both reset placements)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.kernels.recurrent import (BLOCK, EMPTY_CSR, EMPTY_DENSE, column_blocks, gru_direction, gru_reference,
                                       lstm_direction, lstm_reference)

NO_PEEPHOLE = np.zeros(0, np.float32)


def block_pruned(rng, rows, columns, sparsity):
    """A random R [rows, columns] with whole 8-row x 1-column blocks zeroed."""
    r = (rng.standard_normal((rows, columns)) / np.sqrt(columns)).astype(np.float32)
    keep = rng.random((rows // BLOCK, columns)) >= sparsity
    return r * np.repeat(keep, BLOCK, axis=0)


@pytest.mark.parametrize("hidden,width,sparsity", [(8, 8, 0.5), (16, 16, 0.9), (64, 64, 0.9), (16, 8, 0.7)])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_column_blocks_equal_the_dense_path(hidden, width, sparsity, reverse):
    rng = np.random.default_rng(hidden + width)
    steps, batch = 5, 3
    pre = rng.standard_normal((steps, batch, 4 * hidden)).astype(np.float32)
    r = block_pruned(rng, 4 * hidden, width, sparsity)
    projection_t = EMPTY_DENSE if width == hidden else \
        np.ascontiguousarray(rng.standard_normal((width, hidden)).T.astype(np.float32))
    lengths = np.array([5, 0, 3])
    runs = []
    for dense_t, sparse in ((np.ascontiguousarray(r.T), EMPTY_CSR), (EMPTY_DENSE, column_blocks(r))):
        h = np.full((batch, width), 0.3, np.float32)
        c = np.full((batch, hidden), -0.2, np.float32)
        y = np.empty((steps, batch, width), np.float32)
        lstm_direction(pre, dense_t, *sparse, NO_PEEPHOLE, projection_t, h, c, lengths, reverse, np.float32(0), y)
        runs.append((y, h, c))
    for dense_out, blocked_out in zip(*runs):
        np.testing.assert_allclose(blocked_out, dense_out, rtol=1e-5, atol=1e-6)
    if width == hidden:
        y_ref, h_ref, c_ref = lstm_reference(pre, r, np.full((batch, hidden), 0.3), np.full((batch, hidden), -0.2),
                                             lengths, reverse)
        np.testing.assert_allclose(runs[1][0], y_ref, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(runs[1][2], c_ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("linear_before_reset", [False, True])
def test_gru_column_blocks_match_the_reference(linear_before_reset):
    rng = np.random.default_rng(3)
    steps, batch, hidden = 6, 2, 16
    x_proj = rng.standard_normal((steps, batch, 3 * hidden)).astype(np.float32)
    wb, rb = rng.standard_normal((2, 3 * hidden)).astype(np.float32)
    r = block_pruned(rng, 3 * hidden, hidden, 0.8)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    lengths = np.array([6, 4])
    pre = x_proj + wb
    pre[:, :, :2 * hidden] += rb[:2 * hidden]
    h, y = h0.copy(), np.empty((steps, batch, hidden), np.float32)
    gru_direction(pre, EMPTY_DENSE, *column_blocks(r), np.ascontiguousarray(rb[2 * hidden:]), h, lengths, False,
                  np.float32(0), linear_before_reset, y)
    y_ref, h_ref = gru_reference(x_proj, wb, r, rb, h0, lengths, linear_before_reset)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=2e-6)


def test_column_blocks_layout_and_refusals():
    r = np.zeros((16, 3), np.float32)
    r[8:16, 1] = np.arange(1, 9)
    r[2, 2] = 5.0
    values, rows, pointers = column_blocks(r)
    assert pointers.tolist() == [0, 0, 1, 2] and rows.tolist() == [1, 0]
    np.testing.assert_array_equal(values, np.r_[np.arange(1, 9), [0, 0, 5, 0, 0, 0, 0, 0]].astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 8 rows"):
        column_blocks(np.zeros((12, 3), np.float32))


def test_a_block_index_past_r_adds_nothing():
    """A malformed block index (past the gate rows) is skipped, never written past the accumulator."""
    rng = np.random.default_rng(5)
    hidden = 8
    r = block_pruned(rng, 4 * hidden, hidden, 0.0)
    values, rows, pointers = column_blocks(r)
    bad_rows = rows.copy()
    bad_rows[0] = 4 * hidden // BLOCK + 3
    kept = r.copy()
    kept[:BLOCK, 0] = 0.0  # block (0, column 0) is the one redirected
    pre = rng.standard_normal((1, 1, 4 * hidden)).astype(np.float32)
    outs = []
    for sparse in ((values, bad_rows, pointers), column_blocks(kept)):
        h, c = np.full((2, 1, hidden), 0.5, np.float32)
        y = np.empty((1, 1, hidden), np.float32)
        lstm_direction(pre, EMPTY_DENSE, *sparse, NO_PEEPHOLE, EMPTY_DENSE, h, c, np.ones(1, np.int64), False,
                       np.float32(0), y)
        outs.append(y)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)
