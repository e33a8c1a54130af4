"""CTC greedy decoding and classification against independent implementations written here."""

import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyasr.decoding.classification import classify_clip, classify_frames
from tinyasr.decoding.ctc import GrowingWords, ctc_greedy, tokens_to_words
from tinyasr.decoding.results import Token
from tinyasr.decoding.scores import check_scores, output_frame_seconds
from tinyasr.decoding.specs import ClassificationSpec, CTCSpec, FrameClassificationSpec
from tinyasr.errors import InputError, ModelFileError, TinyASRError
from _paths import SHARED_DIR  # noqa: E402

CHARS = [" ", "a", "b", "c", "'"]  # blank is appended last, as in NeMo
SUBWORDS = ["<unk>", "\u2581", "\u2581the", "\u2581ca", "t", "s", "a"]
WORDPIECES = ["the", "ca", "##t", "##s", "a"]
WORDS = ["yes", "no", "up", "down"]


def decode(scores, frame_seconds, valid_frames=None, duration=None, output="output", kind="log_probs", **settings):
    """ctc_greedy with the decoder's settings as keywords (``kind``: the spec's ``logits``)."""
    spec = CTCSpec(output=output, logits=kind, **settings)
    return ctc_greedy(scores, spec, frame_seconds=frame_seconds, valid_frames=valid_frames, duration=duration)


def reference_greedy(log_probs, blank):
    """(id, first frame, last frame) of each emitted token, via itertools.groupby on the argmax."""
    runs, frame = [], 0
    for token_id, group in itertools.groupby(np.argmax(log_probs, axis=1).tolist()):
        length = len(list(group))
        if token_id != blank:
            runs.append((token_id, frame, frame + length - 1))
        frame += length
    return runs


def reference_text(pieces, vocabulary):
    """Transcript text by the usual string rules of each vocabulary kind."""
    if vocabulary is CHARS:
        return " ".join("".join(pieces).split())
    if vocabulary is WORDS:
        return " ".join(pieces)
    if vocabulary is WORDPIECES:
        return " ".join((" " + " ".join(pieces)).replace(" ##", "").split())
    return " ".join("".join(pieces).replace("\u2581", " ").split())


@st.composite
def ctc_case(draw):
    vocabulary = draw(st.sampled_from([CHARS, SUBWORDS, WORDS, WORDPIECES]))
    frames = draw(st.integers(0, 40))
    classes = len(vocabulary) + 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # peaky scores so runs and repeats are common, as in trained CTC models
    logits = rng.normal(size=(frames, classes)) * 4
    logits[:, -1] += draw(st.floats(-2, 6))  # sometimes blank-dominated
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return vocabulary, log_probs.astype(np.float32)


def vocabulary_type_of(vocabulary):
    return {id(CHARS): "chars", id(SUBWORDS): "subword", id(WORDPIECES): "subword", id(WORDS): "words"}[id(vocabulary)]


@settings(max_examples=150, deadline=None)
@given(ctc_case(), st.sampled_from([0.02, 0.04, 0.08]), st.floats(0.0, 1.0))
def test_ctc_greedy_matches_groupby_reference(case, frame_seconds, duration_fraction):
    vocabulary, log_probs = case
    blank = len(vocabulary)
    vocabulary_type = vocabulary_type_of(vocabulary)
    duration = len(log_probs) * frame_seconds * (0.5 + duration_fraction)
    result = decode(
        log_probs[np.newaxis],
        vocabulary=vocabulary,
        blank=blank,
        vocabulary_type=vocabulary_type,
        frame_seconds=frame_seconds,
        duration=duration,
    )
    expected = reference_greedy(log_probs, blank)
    assert [t.id for t in result.tokens] == [token_id for token_id, _, _ in expected]
    assert [t.text for t in result.tokens] == [vocabulary[i] for i, _, _ in expected]
    for token, (token_id, first, last) in zip(result.tokens, expected):
        assert token.start == pytest.approx(first * frame_seconds)
        assert token.end == pytest.approx(max(first * frame_seconds, min((last + 1) * frame_seconds, duration)))
        geometric_mean = math.exp(np.mean(log_probs[first : last + 1, token_id], dtype=np.float64))
        assert token.confidence == pytest.approx(geometric_mean, rel=1e-5)
    assert result.text == reference_text([vocabulary[i] for i, _, _ in expected], vocabulary)
    assert " ".join(w.text for w in result.words) == result.text
    assert result.duration == pytest.approx(duration)


def test_ctc_greedy_logits_decode_like_their_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 30, len(CHARS) + 1)) * 3
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    common = dict(vocabulary=CHARS, blank=len(CHARS), frame_seconds=0.02)
    from_logits = decode(logits, kind="logits", **common)
    from_log_probs = decode(log_probs, kind="log_probs", **common)
    assert from_logits.text == from_log_probs.text
    assert [t.confidence for t in from_logits.tokens] == pytest.approx([t.confidence for t in from_log_probs.tokens])


def one_hot_frames(ids, classes):
    """Log-probs where frame i is certain of ids[i] (probability 0.97)."""
    probs = np.full((len(ids), classes), 0.03 / (classes - 1))
    probs[np.arange(len(ids)), ids] = 0.97
    return np.log(probs)


def test_chars_words_and_times():
    blank = len(CHARS)
    #        a  a  _  b  ' ' ' ' c  _  c  a
    ids = [1, 1, blank, 2, 0, 0, 3, blank, 3, 1]
    result = decode(one_hot_frames(ids, blank + 1), vocabulary=CHARS, blank=blank, frame_seconds=0.04)
    assert result.text == "ab cca"
    assert [(w.text, w.start, w.end) for w in result.words] == [
        ("ab", 0.0, pytest.approx(0.16)),
        ("cca", pytest.approx(0.24), pytest.approx(0.40)),
    ]
    assert all(w.confidence == pytest.approx(0.97) for w in result.words)


def test_blank_may_be_listed_in_the_vocabulary_and_sit_first():
    vocabulary = ["<b>", "x", "y"]
    ids = [1, 0, 1, 2, 2, 0]
    result = decode(one_hot_frames(ids, 3), vocabulary=vocabulary, blank=0, vocabulary_type="words",
                        frame_seconds=0.01)
    assert result.text == "x x y"
    # without the blank in the list, ids above the blank shift by one
    result = decode(one_hot_frames(ids, 3), vocabulary=["x", "y"], blank=0, vocabulary_type="words",
                        frame_seconds=0.01)
    assert result.text == "x x y"


SENTENCEPIECE_MODEL = str(SHARED_DIR / "models/nemo-random/citrinet_256/tokenizer.model")


@pytest.mark.skipif(not os.path.exists(SENTENCEPIECE_MODEL), reason="shared Citrinet tokenizer not available")
def test_subword_text_matches_sentencepiece_decode():
    sentencepiece = pytest.importorskip("sentencepiece")
    processor = sentencepiece.SentencePieceProcessor(model_file=SENTENCEPIECE_MODEL)
    vocabulary = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    blank = len(vocabulary)
    rng = np.random.default_rng(7)
    for _ in range(20):
        ids = rng.integers(1, blank, size=rng.integers(1, 25)).tolist()  # 0 is <unk>
        frames = [i for token_id in ids for i in (token_id, token_id, blank)]
        result = decode(one_hot_frames(frames, blank + 1), vocabulary=vocabulary, blank=blank,
                            vocabulary_type="subword", frame_seconds=0.08)
        assert result.text == " ".join(processor.decode(ids).split())
        assert [t.id for t in result.tokens] == ids
        assert [w.text for w in result.words] == processor.decode(ids).split()
        # a word starts where a piece spelling its beginning starts, and ends where a piece ends
        for word in result.words:
            first = next(t for t in result.tokens if t.start == word.start)
            assert word.text.startswith(first.text.replace("\u2581", ""))
            assert any(t.end == word.end and word.text.endswith(t.text.replace("\u2581", "")) for t in result.tokens)


def test_wordpiece_continuations_join_the_previous_word():
    tokens_text = ["the", "ca", "##t", "##s", "a"]
    ids = [WORDPIECES.index(p) for p in tokens_text]
    blank = len(WORDPIECES)
    result = decode(one_hot_frames(ids, blank + 1), vocabulary=WORDPIECES, blank=blank,
                        vocabulary_type="subword", frame_seconds=0.08)
    assert [w.text for w in result.words] == ["the", "cats", "a"]


def test_end_times_stop_at_the_audio_end():
    blank = len(CHARS)
    ids = [blank] * 8 + [1, 1]  # token in the padded tail beyond the audio
    result = decode(one_hot_frames(ids, blank + 1), vocabulary=CHARS, blank=blank, frame_seconds=0.1,
                        duration=0.85)
    assert result.tokens[0].start == pytest.approx(0.8) and result.tokens[0].end == pytest.approx(0.85)


def test_valid_frames_drop_padding():
    blank = len(CHARS)
    ids = [1, blank, 2, blank, 3, 3]
    result = decode(one_hot_frames(ids, blank + 1), vocabulary=CHARS, blank=blank, frame_seconds=0.02,
                        valid_frames=4)
    assert result.text == "ab"


def test_no_frames_give_an_empty_result():
    result = decode(np.zeros((1, 0, 6), np.float32), vocabulary=CHARS, blank=5, frame_seconds=0.02)
    assert result.text == "" and result.tokens == () and result.words == ()


@pytest.mark.parametrize("feature_frames, output_frames, hop, expected", [
    (112, 56, 0.01, 0.02),  # QuartzNet: pad_to 16, stride 2
    (112, 14, 0.01, 0.08),  # Citrinet: stride 8
    (101, 51, 0.01, 0.02),  # odd length, ceil(101 / 2) output frames
    (100, 100, 0.01, 0.01),
])
def test_output_frame_seconds_is_hop_times_stride(feature_frames, output_frames, hop, expected):
    assert output_frame_seconds(hop, feature_frames, output_frames) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, words", [
    (dict(vocabulary=CHARS, blank=9), "'blank' must be from 0 to 5 .*got 9"),  # refused by the spec
    (dict(vocabulary=CHARS[:2], blank=2), "vocabulary has 2 entries"),  # by the decoder: the output has 6 classes
    (dict(vocabulary=CHARS + ["x"], blank=6), "blank index 6 is outside the 6 classes"),  # fits 7, not 6
    (dict(vocabulary=CHARS, blank=5, vocabulary_type="bytes"), "'vocabulary_type' must be one of .*'bytes'"),
    (dict(vocabulary=CHARS, blank=5, kind="softmax"), "'logits' must be one of .*'softmax'"),
])
def test_bad_decoder_settings_are_named(kwargs, words):
    scores = one_hot_frames([1, 5, 2], 6)
    with pytest.raises(TinyASRError, match=words):
        decode(scores, frame_seconds=0.02, output="logprobs", **kwargs)


def test_bad_output_shape_names_the_output():
    with pytest.raises(InputError, match="'logprobs'"):
        decode(np.zeros((2, 3, 6)), vocabulary=CHARS, blank=5, frame_seconds=0.02, output="logprobs")


def test_tokens_to_words_of_nothing():
    assert tokens_to_words([], "chars") == ()


# token texts per vocabulary type: word boundaries (a space, "▁", a piece without "##", every word) and pieces
# that are only a boundary
GROUPING_TEXTS = {"chars": [" ", "a", "b", "\u4e2d"], "subword": ["\u2581", "\u2581a", "b", "c"],
                  "wordpiece": ["a", "##b", "##c", "d"], "words": ["yes", "no"]}


def _words_by_strings(tokens, vocabulary_type):
    """Words written another way: each token's text marked with where a word starts, then split on the marks;
    a word's times and confidence from the tokens whose text it holds."""
    words, current = [], []
    for token in tokens:
        text = token.text
        if vocabulary_type == "chars":
            starts, text = not text.strip(), text.strip()
        elif vocabulary_type == "wordpiece":
            starts, text = not text.startswith("##"), text.removeprefix("##")
        elif vocabulary_type == "words":
            starts = True
        else:
            starts, text = text.startswith("\u2581"), text.replace("\u2581", "")
        if starts and current:
            words.append(current)
            current = []
        if text:
            current.append((text, token))
    words += [current] if current else []
    return [("".join(t for t, _ in w), w[0][1].start, w[-1][1].end, min(token.confidence for _, token in w))
            for w in words]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(GROUPING_TEXTS)), st.lists(st.tuples(st.integers(0, 3), st.floats(0.01, 1.0)),
                                                        max_size=40), st.lists(st.integers(0, 40), max_size=5))
def test_words_grouped_token_by_token_equal_words_grouped_from_strings(kind, drawn, cuts):
    """tokens_to_words, and GrowingWords fed the same tokens in pieces (a stream's chunks) with any tail,
    against the words written from the token texts' marks (_words_by_strings)."""
    texts = GROUPING_TEXTS[kind]
    tokens = [Token(texts[i % len(texts)], i, 0.1 * n, 0.1 * n + 0.05, p) for n, (i, p) in enumerate(drawn)]
    vocabulary_type = "subword" if kind == "wordpiece" else kind
    expected = _words_by_strings(tokens, kind)
    as_tuples = lambda words: [(w.text, w.start, w.end, w.confidence) for w in words]  # noqa: E731
    assert as_tuples(tokens_to_words(tokens, vocabulary_type, kind == "wordpiece")) == expected
    growing = GrowingWords(vocabulary_type, kind == "wordpiece")
    fed = 0
    for cut in sorted(min(c, len(tokens)) for c in cuts) + [len(tokens)]:
        assert as_tuples(growing.with_tail(tokens[fed:])) == expected
        growing.extend(tokens[fed:cut])
        fed = cut
    assert as_tuples(growing.with_tail([])) == expected and as_tuples(growing.words) == expected[:len(growing.words)]
    assert len(growing.words) >= len(expected) - 1


# ---------------------------------------------------------------------------
# classification


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 15), st.sampled_from(["logits", "log_probs", "probs"]),
       st.integers(0, 2**32 - 1))
def test_top_k_matches_softmax_and_argsort(classes, top_k, kind, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, classes)) * 3
    expected_probs = np.exp(logits[0] - logits[0].max())
    expected_probs /= expected_probs.sum()
    given_scores = {"logits": logits, "log_probs": np.log(expected_probs)[None], "probs": expected_probs[None]}[kind]
    labels = [f"label{i}" for i in range(classes)]
    result = classify_clip(given_scores, ClassificationSpec(output="output", labels=labels, logits=kind), top_k=top_k)
    order = np.argsort(expected_probs)[::-1][:top_k]
    assert [name for name, _ in result.labels] == [labels[i] for i in order]
    assert [p for _, p in result.labels] == pytest.approx(expected_probs[order].tolist(), rel=1e-9)
    assert result.label == labels[order[0]]


def test_classification_label_count_must_match():
    with pytest.raises(InputError, match="'logits'.*3 labels"):
        classify_clip(np.zeros((1, 4)), ClassificationSpec(output="logits", labels=["a", "b", "c"]))


def test_frame_segments_merge_runs():
    labels = ["background", "speech"]
    frame_labels = [0, 0, 1, 1, 1, 0, 1]
    probs = np.where(np.eye(2)[frame_labels] > 0, 0.9, 0.1)
    spec = FrameClassificationSpec(output="output", labels=labels, logits="probs")
    result = classify_frames(probs[None], spec, frame_seconds=0.02, duration=0.13)
    assert result.frame_labels == tuple(labels[i] for i in frame_labels)
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-6)
    expected = []  # (label, first, stop) runs found another way: positions where the label changes
    edges = [0] + [i for i in range(1, len(frame_labels)) if frame_labels[i] != frame_labels[i - 1]] + [7]
    for first, stop in zip(edges[:-1], edges[1:]):
        expected.append((labels[frame_labels[first]], first * 0.02, min(stop * 0.02, 0.13)))
    assert [(s.label, s.start, s.end) for s in result.segments] == [
        (label, pytest.approx(start), pytest.approx(end)) for label, start, end in expected
    ]
    assert all(s.confidence == pytest.approx(0.9) for s in result.segments)


def test_frame_classification_softmaxes_logits_and_drops_padding():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 20, 3))
    result = classify_frames(logits, FrameClassificationSpec(output="output", labels=["a", "b", "c"]),
                             frame_seconds=0.01, valid_frames=15)
    expected = np.exp(logits[0, :15]) / np.exp(logits[0, :15]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5)
    assert result.duration == pytest.approx(0.15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_scores_names_the_output_holding_nan_or_inf(dtype):
    """check_scores (every decoder's guard, on each streamed graph run too) against np.isfinite: one NaN / +-inf
    anywhere in a [1, frames, classes] output or its transposed view is a ModelFileError naming the output and
    the count; finite scores, extremes included, pass."""
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((1, 11, 7)).astype(dtype)
    scores[0, 0, 0] = np.finfo(dtype).max
    for view in (scores, scores.transpose(0, 2, 1)):
        check_scores(view, "logits", "model.tasr", "logprobs")
    for bad in (np.nan, np.inf, -np.inf):
        for at in [(0, 0, 0), (0, 5, 3), (0, 10, 6)]:
            broken = scores.copy()
            broken[at] = bad
            for view in (broken, broken.transpose(0, 2, 1)):
                with pytest.raises(ModelFileError, match=r"model.tasr.*output 'logprobs' holds 1 NaN or infinite "
                                                         r"values of 77"):
                    check_scores(view, "logits", "model.tasr", "logprobs")
