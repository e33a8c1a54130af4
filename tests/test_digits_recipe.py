"""The digit-string recipe: WER arithmetic, data composition and split, model export.

References are hand-worked cases, formulas (lengths, frequencies, spectral
slopes) and onnxruntime for the exported graph.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

from recipes.digits import data  # noqa: E402
from recipes.digits.evaluate import edit_distance, greedy_ctc, word_error_rate  # noqa: E402
from recipes.digits.model import DigitNet, export_onnx, output_lengths  # noqa: E402

FSDD = data.default_fsdd_dir()
needs_fsdd = pytest.mark.skipif(not os.path.isdir(os.path.join(FSDD, "recordings")), reason="FSDD not present")


# --- WER and decoding -----------------------------------------------------


@pytest.mark.parametrize(
    "ref, hyp, distance",
    [
        ("one two three", "one two three", 0),
        ("one two three", "one nine three", 1),  # substitution
        ("one two three", "one three", 1),  # deletion
        ("one two three", "one two two three", 1),  # insertion
        ("one two three", "", 3),
        ("", "four five", 2),
        ("one two three four", "two three four five", 2),  # shift: delete + insert, not 4 substitutions
        ("seven eight", "eight seven", 2),
    ],
)
def test_edit_distance_hand_cases(ref, hyp, distance):
    assert edit_distance(ref.split(), hyp.split()) == distance


def test_word_error_rate_is_corpus_level():
    # 1 error over 2 words and 0 over 8: corpus WER 1/10, not the mean of per-string rates (0.25)
    refs = [[1, 2], [3, 4, 5, 6, 7, 8, 9, 0]]
    hyps = [[1, 9], [3, 4, 5, 6, 7, 8, 9, 0]]
    assert word_error_rate(refs, hyps) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        word_error_rate(refs, hyps[:1])


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    blank = data.BLANK
    frames = [blank, 4, 4, blank, 4, 2, 2, blank, blank, 7]  # "four four two seven"
    logprobs = np.full((len(frames), blank + 1), -10.0)
    logprobs[np.arange(len(frames)), frames] = 0.0
    assert greedy_ctc(logprobs) == [4, 4, 2, 7]


# --- signal helpers ---------------------------------------------------------


@pytest.mark.parametrize("factor", [0.85, 1.0, 1.15])
def test_change_speed_scales_length_and_frequency(factor):
    n, tone_hz = 8000, 500.0
    tone = np.sin(2 * np.pi * tone_hz * np.arange(n) / data.SAMPLE_RATE).astype(np.float32)
    faster = data.change_speed(tone, factor)
    assert len(faster) == round(n / factor)
    spectrum = np.abs(np.fft.rfft(faster * np.hanning(len(faster))))
    peak_hz = np.argmax(spectrum) * data.SAMPLE_RATE / len(faster)
    assert peak_hz == pytest.approx(tone_hz * factor, abs=2 * data.SAMPLE_RATE / len(faster))


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise_has_unit_rms_and_the_requested_slope(exponent):
    noise = data.coloured_noise(np.random.default_rng(0), 1 << 16, exponent)
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.arange(len(power))
    band = (freqs > 50) & (freqs < len(power) - 50)
    slope = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)


# --- FSDD split and composition ------------------------------------------------


@pytest.fixture(scope="module")
def parts():
    return data.split(data.load_fsdd(FSDD))


@needs_fsdd
def test_split_keeps_the_held_out_speaker_and_takes_out_of_training(parts):
    assert len(parts["unseen"]) == 500 and {c.speaker for c in parts["unseen"]} == {data.HELD_OUT_SPEAKER}
    assert all(c.speaker != data.HELD_OUT_SPEAKER and c.take >= 5 for c in parts["train"])
    assert all(c.speaker != data.HELD_OUT_SPEAKER and c.take < 5 for c in parts["seen_heldback"])
    assert len(parts["train"]) + len(parts["seen_heldback"]) == 2500


@needs_fsdd
def test_clean_composition_is_the_recordings_in_order_with_silent_gaps(parts):
    takes = [[clips[0]] for clips in data.by_digit(parts["unseen"])]  # one take per digit: the clip is known
    audio, digits = data.compose(np.random.default_rng(3), takes, 5, augment=False)
    assert len(digits) == 5
    position = 0
    for digit in digits:
        clip = takes[digit][0].samples
        offset = audio[position:].tobytes().find(clip.tobytes()) // audio.itemsize
        assert offset >= 0.05 * data.SAMPLE_RATE - 1, "each recording follows a gap of at least 50 ms"
        assert offset <= 0.4 * data.SAMPLE_RATE and not np.any(audio[position:position + offset])
        position += offset + len(clip)
    assert 0.05 * data.SAMPLE_RATE - 1 <= len(audio) - position <= 0.4 * data.SAMPLE_RATE
    assert not np.any(audio[position:])


@needs_fsdd
def test_augmented_composition_stays_in_range(parts):
    rng = np.random.default_rng(5)
    takes = data.by_digit(parts["train"])
    for n in (1, 7):
        audio, digits = data.compose(rng, takes, n, augment=True)
        assert audio.dtype == np.float32 and len(digits) == n
        assert 0.09 <= np.abs(audio).max() <= 1.0 and np.all(np.isfinite(audio))
        assert np.count_nonzero(audio) == len(audio)  # noise fills the gaps


# --- model ------------------------------------------------------------------------


def test_model_exports_to_onnx_matching_torch_for_any_length(tmp_path):
    torch.manual_seed(0)
    model = DigitNet(channels=32).eval()
    for bn in model.modules():  # non-trivial statistics, so a wrong BN export would show
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path / "digits.onnx")
    export_onnx(model, path, {"labels": "[]"}, example_frames=50)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for frames in (7, 100, 301):
        x = np.random.default_rng(frames).standard_normal((2, 64, frames)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(["logprobs"], {"audio_signal": x})[0]
        assert got.shape == (2, int(output_lengths(torch.tensor(frames))), data.BLANK + 1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.exp(got).sum(axis=-1), 1.0, rtol=1e-5)


# --- synthetic voices -------------------------------------------------------


def test_synthetic_voices_say_every_digit_reproducibly():
    pytest.importorskip("espeakng_loader", reason="eSpeak NG (pip install espeakng-loader) makes the voices")
    from recipes.digits.synthetic import synthesize_digits

    clips = synthesize_digits(3, seed=5)
    assert [(c.speaker, c.digit) for c in clips] == [(f"synth{i}", d) for i in range(3) for d in range(10)]
    for clip in clips:
        seconds = len(clip.samples) / data.SAMPLE_RATE
        assert clip.samples.dtype == np.float32 and 0.15 < seconds < 1.5, (clip.speaker, clip.digit, seconds)
        assert np.abs(clip.samples).max() == pytest.approx(0.5, rel=1e-3)
        # trimmed to the speech: within the 20 ms margin the clip is already loud (above -40 dB of its peak)
        margin = int(0.02 * data.SAMPLE_RATE)
        loud = np.flatnonzero(np.abs(clip.samples) > 0.5 * 10 ** (-40 / 20))
        assert loud[0] <= margin + 1 and loud[-1] >= len(clip.samples) - margin - 2
    # the seed picks the voices; eSpeak's own noise sources (breath, aspiration) vary a few samples per run
    length_changes = [abs(len(a.samples) / len(b.samples) - 1) for a, b in zip(clips, synthesize_digits(3, seed=5))]
    assert max(length_changes) < 0.02
    length_changes = [abs(len(a.samples) / len(b.samples) - 1) for a, b in zip(clips, synthesize_digits(3, seed=6))]
    assert np.median(length_changes) > 0.05  # other voices: other rates and pitches
