"""A stream's greedy partial results, carried on chunk by chunk (tinyasr.decoding.ctc_partial), against greedy
decoding of all the frames so far from scratch (ctc_greedy, which Recognizer.transcribe runs), after every chunk."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.decoding.ctc import ctc_greedy
from tinyasr.decoding.ctc_partial import GreedyPartial
from tinyasr.decoding.specs import CTCSpec
from tinyasr.pipeline.vad import SpeechGate

RATE = 8000
FRAME_SECONDS = 0.02  # output frames of 20 ms: 4 per 80 ms chunk


def _bursts(seconds: float, rng) -> np.ndarray:
    """Noise bursts of 0.2-1.5 s between quiet gaps of 0.1-1.2 s: the gate opens segments, closes some (gaps
    over 0.5 s) and keeps others open across a gap."""
    pieces, total = [], 0
    while total < seconds * RATE:
        loud = int(rng.uniform(0.2, 1.5) * RATE)
        quiet = int(rng.uniform(0.1, 1.2) * RATE)
        pieces += [rng.normal(0, 0.1, loud), rng.normal(0, 1e-4, quiet)]
        total += loud + quiet
    return np.concatenate(pieces).astype(np.float32)


def _peaked_log_probs(frames: int, classes: int, blank: int, rng) -> np.ndarray:
    """Log-probs whose best class runs over a few frames: blanks, repeats and tokens, some runs only 1 frame."""
    labels, label = [], blank
    for _ in range(frames):
        draw = rng.random()
        label = label if draw < 0.4 else blank if draw < 0.75 else int(rng.integers(classes))
        labels.append(label)
    logits = rng.normal(0, 1, (frames, classes)) + 4.0 * np.eye(classes)[labels]
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


VOCABULARIES = {
    "chars": (list(" abc'"), "chars"),  # a space token ends a word
    "sentencepiece": (["▁a", "b", "▁", "c", "▁dd"], "subword"),
    "wordpiece": (["a", "##b", "c", "##dd", "e"], "subword"),
    "words": (["one", "two", "three", "four"], "words"),
    "unbroken": (["\u4e2d", "\u6587", "\u5b57"], "chars"),  # no boundary: the utterance is one growing word
}


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
@pytest.mark.parametrize("lead,score", [(0.0, None), (0.1, None), (0.1, "certainty"), (0.3, None)])
@pytest.mark.parametrize("chunk_frames", [1, 4, 7])
def test_partials_equal_a_decode_from_scratch_after_every_chunk(vocabulary, lead, score, chunk_frames):
    texts, kind = VOCABULARIES[vocabulary]
    rng = np.random.default_rng(len(texts) + chunk_frames + int(10 * lead))
    spec = CTCSpec(output="logprobs", blank=len(texts), vocabulary=tuple(texts), vocabulary_type=kind,
                   oov_score=score, cover_seconds=0.1 if lead == 0.3 else None)
    audio = _bursts(12.0, rng)
    frames = int(len(audio) / RATE / FRAME_SECONDS) + int(2 * lead / FRAME_SECONDS)  # the lead at both ends
    log_probs = _peaked_log_probs(frames, len(texts) + 1, spec.blank, rng)
    partial, gate = GreedyPartial(spec, FRAME_SECONDS, lead), SpeechGate(RATE)
    step = int(chunk_frames * FRAME_SECONDS * RATE)
    checked = words = 0
    for chunk, first in enumerate(range(0, len(audio), step)):
        gate.accept(audio[first:first + step])
        seconds = min(len(audio), first + step) / RATE
        # frames come in uneven numbers; with a lead, the last ones reach past the audio (their tokens are clipped)
        done = max(0, min(frames, (chunk + 1) * chunk_frames + int(2 * lead / FRAME_SECONDS) + chunk % 5 - 2))
        new = log_probs[partial.frames:done]
        if len(new):
            partial.extend(new)
        if not partial.frames:
            continue
        held = gate.held_through()
        got = partial.result(seconds, gate.speech(lead=lead), gate.undecided_from() + lead,
                             None if held is None else held + lead)
        expected = ctc_greedy(log_probs[:partial.frames], spec, frame_seconds=FRAME_SECONDS,
                              duration=seconds + 2 * lead, speech=gate.speech(lead=lead))
        if lead:
            expected = expected.shifted(-lead, seconds)
        assert got == expected, f"chunk {chunk}"
        checked += 1
        words = max(words, len(got.words))
    assert checked > 50 and words > (0 if vocabulary == "unbroken" else 10)  # tokens kept, words made


def test_partials_of_the_bundled_model_on_real_speech_equal_a_decode_from_scratch():
    """OnlineStream's partial after every chunk (80 ms and an odd 37 ms) against its own decode from scratch, on
    speech, silence and noise (the final result, decoded from scratch as before, is compared with the offline one
    in tests/test_streaming.py)."""
    soundfile = pytest.importorskip("soundfile")
    from tinyasr import Recognizer
    from tinyasr.model_cache import BUNDLED_MODELS
    from tinyasr.pipeline.online import OnlineStream

    recognizer = Recognizer()
    speech, rate = soundfile.read(BUNDLED_MODELS / "sample_digits.wav", dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.01, rate).astype(np.float32)
    audio = np.concatenate([speech, np.zeros(rate, np.float32), 0.5 * speech, noise, speech])
    for milliseconds in (80, 37):
        stream, step, texts = OnlineStream(recognizer), rate * milliseconds // 1000, set()
        for first in range(0, len(audio), step):
            stream.accept_waveform(audio[first:first + step], rate)
            fresh = stream._partial is None  # a chunk without new frames keeps the partial it had
            partial = stream.partial_result
            if fresh:
                assert partial == stream._decode()
            texts.add(partial.text)
        assert len(texts) > 10 and len(partial.words) >= 12  # two of the three strings read while streaming
