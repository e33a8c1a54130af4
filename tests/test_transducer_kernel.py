"""The compiled greedy loop (tinyasr.kernels.transducer) against the search written out in Python over the
prediction network's own step (BLAS input projection + the LSTM kernel) and the joint in numpy: the same tokens,
frames, durations and confidences (within float32 rounding: the two sum the token's input projection in
different orders, and the difference grows over 150 tokens of state), for one- and two-layer prediction networks with and without projection, dense,
CSR and 8 x 1 block-sparse weights, RNN-T and TDT, the frames given at once or in pieces."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.decoding.transducer import GreedySearch, Joint, LSTMLayer, PredictionNetwork, Transducer
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays, csr_arrays


def _stored(matrix, form, rng):
    if form == "dense":
        return matrix
    if form == "csr":
        matrix = matrix * (rng.random(matrix.shape) < 0.2)
        return CSRMatrix(*csr_arrays(matrix), matrix.shape)
    blocks = rng.random((matrix.shape[0] // 8, matrix.shape[1])) < 0.2
    matrix = matrix * np.repeat(blocks, 8, axis=0)
    return BSRMatrix(*bsr_arrays(matrix, (8, 1)), matrix.shape, (8, 1))


def _transducer(seed, layers, projection, form, durations=()):
    rng = np.random.default_rng(seed)
    vocabulary, embed, hidden, joint_hidden, encoder = 12, 10, 16, 20, 14
    made, inputs = [], embed
    for _ in range(layers):
        width = 8 if projection else hidden
        made.append(LSTMLayer(_stored(rng.standard_normal((4 * hidden, inputs)).astype(np.float32) * 0.5, form, rng),
                              _stored(rng.standard_normal((4 * hidden, width)).astype(np.float32) * 0.5, form, rng),
                              rng.standard_normal(4 * hidden).astype(np.float32) * 0.1,
                              rng.standard_normal((width, hidden)).astype(np.float32) if projection else None))
        inputs = width
    embedding = rng.standard_normal((vocabulary, embed)).astype(np.float32)
    embedding[vocabulary - 1] = 0.0  # the blank's row (NeMo's blank_as_pad)
    outputs = vocabulary + len(durations)
    out_b = rng.standard_normal(outputs).astype(np.float32)
    out_b[vocabulary - 1] += 3.0  # blanks common enough that frames end in both ways
    joint = Joint(rng.standard_normal((encoder, joint_hidden)).astype(np.float32) * 0.4,
                  rng.standard_normal(joint_hidden).astype(np.float32) * 0.1,
                  rng.standard_normal((inputs, joint_hidden)).astype(np.float32) * 0.4,
                  rng.standard_normal(joint_hidden).astype(np.float32) * 0.1,
                  rng.standard_normal((joint_hidden, outputs)).astype(np.float32) * 0.3, out_b, "relu")
    frames = rng.standard_normal((60, encoder)).astype(np.float32)
    return Transducer(PredictionNetwork(embedding, made), joint, vocabulary - 1, durations), frames


def _python_greedy(model: Transducer, frames: np.ndarray, max_symbols: int):
    """NeMo's greedy rules, one Python step per try (the module docstring of tinyasr.decoding.transducer)."""
    projected_frames = model.joint.project_encoder(frames)
    hyp, confidences, t = model.start(), [], 0
    classes, tdt = model.token_classes, bool(model.durations)
    while t < len(frames):
        following = t + 1
        for tries in range(1, max_symbols + 1):
            logits = model.joint.logits(projected_frames[t], hyp.projected)
            token = int(np.argmax(logits[:classes]))
            duration = model.durations[int(np.argmax(logits[classes:]))] if tdt else None
            if token != model.blank:
                shifted = np.exp(logits[:classes] - logits[:classes].max())
                confidences.append(float(shifted[token] / shifted.sum()))
                hyp = model.emit(hyp, token, t, duration)
            if tdt and duration:
                following = t + duration + (1 if tries == max_symbols else 0)
                break
            if not tdt and token == model.blank:
                break
        t = following
    return hyp, confidences


@pytest.mark.parametrize("form", ["dense", "csr", "bsr"])
@pytest.mark.parametrize("layers,projection", [(1, False), (2, True)])
@pytest.mark.parametrize("durations", [(), (0, 1, 2, 4)])
def test_the_compiled_search_equals_the_python_search(form, layers, projection, durations):
    model, frames = _transducer(layers * 10 + len(durations), layers, projection, form, durations)
    expected, confidences = _python_greedy(model, frames, max_symbols=3)
    emitted = np.bincount(expected.frames, minlength=len(frames))
    assert len(expected.tokens) > 5 and (emitted < 3).any()  # frames left at a blank (or a duration) ...
    assert durations or (emitted == 3).any()  # ... and, in RNN-T, at max_symbols
    for pieces in ([frames], np.array_split(frames, [7, 8, 30])):
        search = GreedySearch(model, max_symbols=3)
        for piece in pieces:
            hyp = search.advance(piece)
        assert hyp.tokens == expected.tokens and hyp.frames == expected.frames
        assert hyp.durations == expected.durations
        np.testing.assert_allclose(search.confidences, confidences, rtol=1e-4, atol=1e-5)
        for (h, c), (h_ref, c_ref) in zip(hyp.state, expected.state):
            np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(hyp.projected, expected.projected, rtol=1e-4, atol=1e-5)
