"""The digit-string recipe: WER arithmetic, data composition and split, model export.

References are hand-worked cases, formulas (lengths, frequencies, spectral
slopes) and onnxruntime for the exported graph.
"""

import ast
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

from recipes.digits import data  # noqa: E402
from recipes.digits.evaluate import edit_distance, greedy_ctc, word_error_rate  # noqa: E402
from recipes.digits.model import DigitNet, export_onnx, output_lengths  # noqa: E402
from _paths import REPO, SHARED_DIR  # noqa: E402

FSDD = data.default_fsdd_dir()
needs_fsdd = pytest.mark.skipif(not os.path.isdir(os.path.join(FSDD, "recordings")),
                                reason=f"shared FSDD recordings not present in {FSDD}")


# --- where the data is ------------------------------------------------------


def test_recipes_read_the_shared_data_where_the_tests_do(monkeypatch, tmp_path):
    assert FSDD == str(SHARED_DIR / "audio" / "fsdd")
    monkeypatch.setenv("TINYASR_SHARED", str(tmp_path))
    assert data.default_fsdd_dir() == str(tmp_path / "audio" / "fsdd")
    for unset in (lambda: monkeypatch.delenv("TINYASR_SHARED"), lambda: monkeypatch.setenv("TINYASR_SHARED", "")):
        unset()
        assert data.default_fsdd_dir() == str(REPO.parent / "shared" / "audio" / "fsdd")


class _SharedStrings(ast.NodeVisitor):
    """The functions (or "<module>") whose string constants, docstrings aside, mention "shared"."""

    def __init__(self):
        self.scope, self.found = ["<module>"], set()

    def visit_FunctionDef(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Expr(self, node):  # a bare string statement is a docstring, not a path
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and "shared" in node.value.lower():
            self.found.add(self.scope[-1])


def test_only_one_helper_in_the_recipes_names_the_shared_folder():
    """A recipe that built its own ../shared path would ignore TINYASR_SHARED again."""
    found = set()
    for path in sorted((REPO / "recipes").rglob("*.py")):
        visitor = _SharedStrings()
        visitor.visit(ast.parse(path.read_text()))
        found |= {(str(path.relative_to(REPO)), scope) for scope in visitor.found}
    assert found == {("recipes/digits/data.py", "shared_dir")}


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


def test_model_extended_from_the_bundled_tasr_computes_what_the_runtime_does():
    from recipes.digits.model import load_tasr_weights
    from tinyasr.engine.offline import load_model

    tasr = str(REPO / "tinyasr" / "models" / "digits.tasr")
    rng = np.random.default_rng(4)
    calibration = torch.from_numpy(rng.standard_normal((4, 64, 120)).astype(np.float32))
    model = DigitNet()
    load_tasr_weights(model, tasr, calibration)
    x = rng.standard_normal((1, 64, 90)).astype(np.float32)
    expected = load_model(tasr).run({"audio_signal": x})["logprobs"]
    for train_mode in (False, True):  # batch norm adds only the folded bias: in eval mode on any input,
        model.train(train_mode)       # in training mode on the calibration batch (whose statistics it holds)
        with torch.no_grad():
            if train_mode:
                # (to ~1e-2: float32 batch statistics of activations whose mean is large next to their spread)
                np.testing.assert_allclose(model(calibration)[:1].numpy(), model.eval()(calibration)[:1].numpy(),
                                           atol=2e-2)
            else:
                np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        load_tasr_weights(DigitNet(channels=32), tasr, calibration)


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


# --- no-digit material and padding (issue 16) ----------------------------------------


def test_non_digit_words_hold_no_digit_word_or_sound_alike():
    from recipes.digits.no_digits import NON_DIGIT_WORDS, SOUND_ALIKES

    assert set(data.DIGIT_WORDS) <= SOUND_ALIKES and {"oh", "for", "to", "too", "won", "ate", "free"} <= SOUND_ALIKES
    assert not set(NON_DIGIT_WORDS) & SOUND_ALIKES
    assert len(set(NON_DIGIT_WORDS)) == len(NON_DIGIT_WORDS) >= 200
    from recipes.digits.no_digits import phrase_texts

    texts = phrase_texts(np.random.default_rng(0), 300)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) == 1 and max(lengths) == 10 and 0.2 < np.mean(np.array(lengths) == 1) < 0.5
    assert all(w in NON_DIGIT_WORDS for t in texts for w in t.split())


@pytest.mark.parametrize("kind", ["silence", "noise", "hum", "clicks", "tone", "notes"])
def test_noise_examples_have_the_length_level_and_content_of_their_kind(kind):
    from recipes.digits.no_digits import noise_example

    rng = np.random.default_rng(11)
    for seconds in (0.2, 3.0):
        audio = noise_example(rng, kind, seconds)
        assert audio.dtype == np.float32 and len(audio) == int(seconds * data.SAMPLE_RATE)
        peak = np.abs(audio).max()
        if kind == "silence":
            assert peak == 0.0  # digital silence, exactly
        else:
            assert 10 ** (-70 / 20) * 0.999 <= peak <= 10 ** (-3 / 20) * 1.001


def test_hum_is_mains_frequency_and_its_harmonics():
    from recipes.digits.no_digits import _hum

    for seed in range(5):
        audio = _hum(np.random.default_rng(seed), 4 * data.SAMPLE_RATE) * np.hanning(4 * data.SAMPLE_RATE)
        power = np.abs(np.fft.rfft(audio)) ** 2
        freqs = np.fft.rfftfreq(len(audio), 1 / data.SAMPLE_RATE)

        def share_on_harmonics(f0):
            k = np.maximum(np.round(freqs / f0), 1)
            return power[np.abs(freqs - k * f0) < 1.0].sum() / power.sum()

        assert max(share_on_harmonics(f0) for f0 in np.arange(49.5, 60.61, 0.05)) > 0.99
        assert share_on_harmonics(55.0) < 0.9  # a wrong fundamental does not explain it


def test_no_digit_examples_have_empty_targets():
    from recipes.digits.data import Clip
    from recipes.digits.no_digits import no_digit_example

    rng = np.random.default_rng(2)
    phrase = Clip(-1, "phrase0", 0, (0.5 * np.sin(np.arange(4000) / 7)).astype(np.float32))
    for _ in range(40):
        audio, target = no_digit_example(rng, [phrase])
        assert target == [] and audio.dtype == np.float32 and np.all(np.isfinite(audio))
        assert 0.2 * data.SAMPLE_RATE - 1 <= len(audio) and np.abs(audio).max() <= 1.0


@needs_fsdd
def test_training_strings_are_padded_0_to_half_a_second_and_single_digits_often_cut_tight(parts, monkeypatch):
    # without augment_audio (speed, noise, level) the padding is the digital silence before the first
    # and after the last recording
    takes = [[clips[0]] for clips in data.by_digit(parts["train"])]
    monkeypatch.setattr(data, "augment_audio", lambda rng, audio: audio)
    rng = np.random.default_rng(8)
    leads, trails, tight = [], [], 0
    for n in [1] * 200 + [3] * 100:
        audio, digits = data.compose(rng, takes, n, augment=True)
        loud = np.flatnonzero(audio)
        first, last = takes[digits[0]][0].samples, takes[digits[-1]][0].samples
        lead = loud[0] - np.flatnonzero(first)[0]
        trail = len(audio) - 1 - loud[-1] - (len(last) - 1 - np.flatnonzero(last)[-1])
        leads.append(lead / data.SAMPLE_RATE)
        trails.append(trail / data.SAMPLE_RATE)
        tight += n == 1 and lead == 0 and trail == 0
    assert 0.0 <= min(leads + trails) and max(leads + trails) <= 0.5
    assert max(leads) > 0.45 and max(trails) > 0.45  # the whole range is used
    assert 0.35 < tight / 200 < 0.65  # TIGHT_SINGLE_SHARE of single digits have no padding at all


def test_length_grouped_batches_hold_every_example_once_each_batch_a_run_of_the_sorted_lengths():
    """Issue 16: a tight single digit must not share a batch with a long string (it would be followed by batch
    padding a real file lacks).  Reference: the lengths sorted by numpy, cut into consecutive runs."""
    from recipes.digits.train import length_grouped

    rng = np.random.default_rng(3)
    items = [(np.zeros(int(n), np.float32), [i]) for i, n in enumerate(rng.integers(800, 60000, size=70))]
    batches = length_grouped(items, 8, rng)
    assert sorted(d for batch in batches for _, (d,) in batch) == list(range(70))  # each example once
    lengths = np.sort([len(audio) for audio, _ in items])
    runs = {tuple(lengths[i:i + 8]) for i in range(0, 70, 8)}
    assert {tuple(sorted(len(audio) for audio, _ in batch)) for batch in batches} == runs
    shortest = [min(len(audio) for audio, _ in batch) for batch in batches]
    assert shortest != sorted(shortest)  # batches come in random order, not shortest first


def test_the_bundled_model_has_the_recipe_front_end_with_its_padding():
    """The runtime pads as training did: the bundled manifest's front end is data.FRONTEND, pad_seconds included."""
    from tinyasr.pipeline.recognizer import Recognizer

    frontend = Recognizer().frontend
    assert frontend == data.FRONTEND and frontend.pad_seconds == 0.1


# --- the bundled file: averaged weights, padding and the out-of-vocabulary threshold ---


class _Batches:
    """The two calls WeightAverage.apply makes of DigitStrings: fixed batches, no augmentation."""

    def __init__(self, batches):
        self.batches = list(batches)

    def next_batch(self):
        batch = self.batches.pop(0)
        return batch, torch.full((batch.shape[0],), batch.shape[2]), None, None

    def augment(self, batch, lengths):
        return batch


def test_weight_average_is_the_mean_of_the_kept_steps_with_batch_norm_statistics_of_the_average():
    from recipes.digits.train import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 1), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, start=2, every=2, last_step=6)
    kept = []
    for step in range(1, 7):  # steps 2, 4, 6 are kept
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step))
        average.add(step)
        if step % 2 == 0:
            kept.append([p.detach().clone() for p in model.parameters()])
    batches = [torch.randn(5, 3, 7) for _ in range(3)]
    average.apply(_Batches(batches), batches=3)
    assert average.count == 3
    for got, *steps in zip(model.parameters(), *kept):
        torch.testing.assert_close(got.detach(), sum(steps) / 3)
    # the statistics: the mean over the three batches of each batch's mean / unbiased variance of the conv output
    with torch.no_grad():
        outputs = [model[0](b).transpose(1, 2).reshape(-1, 4) for b in batches]
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, torch.stack([o.mean(0) for o in outputs]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([o.var(0) for o in outputs]).mean(0))
    assert bn.momentum == 0.1
    for start, every in ((7, 2), (2, 0)):  # past --steps, or no interval: refused before any training
        with pytest.raises(ValueError, match="--average-from"):
            WeightAverage(model, start=start, every=every, last_step=6)


def test_set_pad_writes_the_padding_and_the_out_of_vocabulary_threshold(tmp_path):
    from recipes.digits.set_pad import with_pad_seconds
    from tinyasr.errors import ModelFileError
    from tinyasr.format.container import read_model

    bundled = str(REPO / "tinyasr" / "models" / "digits.tasr")
    out = str(tmp_path / "digits.tasr")
    with_pad_seconds(bundled, out, 0.25, oov_threshold=0.55)
    with read_model(bundled) as before, read_model(out) as after:
        assert after.manifest["frontend"]["pad_seconds"] == 0.25
        assert after.manifest["decoder"] == {**before.manifest["decoder"], "oov_threshold": 0.55}
        for name in before.tensor_names():
            np.testing.assert_array_equal(before.tensor(name), after.tensor(name))
    with pytest.raises(ModelFileError, match="'oov_threshold' must be"):
        with_pad_seconds(bundled, str(tmp_path / "bad.tasr"), 0.1, oov_threshold=1.5)


def test_out_of_box_measures_the_rule_the_model_states_or_the_runtime_default(tmp_path):
    """The report's threshold is the decoder entry's (coverage under 0.7 -> over 0.3 uncovered); a model fresh
    from evaluate --convert states none and gets the runtime's default (before: a TypeError)."""
    from recipes.digits.out_of_box import rule_threshold
    from tinyasr import Recognizer
    from tinyasr.decoding.confidence import OOV_THRESHOLD
    from tinyasr.format.container import read_model, write_model

    bundled = REPO / "tinyasr" / "models" / "digits.tasr"
    assert rule_threshold(Recognizer(str(bundled))) == pytest.approx(0.3)
    with read_model(str(bundled)) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    manifest["decoder"] = {k: v for k, v in manifest["decoder"].items() if not k.startswith("oov_")}
    write_model(str(tmp_path / "plain.tasr"), manifest, tensors)
    assert rule_threshold(Recognizer(str(tmp_path / "plain.tasr"))) == pytest.approx(1 - OOV_THRESHOLD)
