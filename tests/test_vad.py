"""VAD: the windowed MarbleNet frame VAD against onnxruntime on whole clips, the energy fallback, segmentation
rules, and transcribe_long on a 10-minute file with bounded memory."""

from __future__ import annotations

import glob
import os
import tracemalloc

import numpy as np
import pytest
import soundfile

import tinyasr
from test_streaming import energy_ctc_parts
from tinyasr import transcribe_long
from tinyasr.audio.io import load_audio
from tinyasr.format.container import write_model
from tinyasr.kernels.energy import broadband_spans, tonal_spans, windowed_spans
from tinyasr.kernels.fft import power_spectra
from tinyasr.pipeline.recognizer import Recognizer
from tinyasr.pipeline.vad import FRAME_SECONDS, EnergyVAD, MarbleNetVAD, Segmenter, VADConfig
from _paths import SHARED_DIR  # noqa: E402

SHARED = str(SHARED_DIR)
VAD_ONNX = os.path.join(SHARED, "models", "marblenet_vad", "frame_vad_marblenet.onnx")
AUDIO = os.path.join(SHARED, "audio")
GOFORWARD = os.path.join(AUDIO, "pocketsphinx_goforward.wav")
needs_vad = pytest.mark.skipif(not os.path.exists(VAD_ONNX), reason="shared MarbleNet VAD not available")
needs_audio = pytest.mark.skipif(not os.path.exists(GOFORWARD), reason="shared audio not available")


def _feed(detector, samples, piece=1234):
    return np.concatenate([detector.accept(samples[i:i + piece]) for i in range(0, len(samples), piece)]
                          + [detector.finish()])


@pytest.fixture(scope="module")
def marblenet(tmp_path_factory):
    pytest.importorskip("onnx")
    from tinyasr_convert import convert

    return convert(VAD_ONNX, tmp_path_factory.mktemp("vad") / "vad.tasr")


def _onnxruntime_scores(samples):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(VAD_ONNX, providers=["CPUExecutionProvider"])
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)[None, None, :]
    return session.run(["score_active"], {"audio": pcm})[0].reshape(-1)


@needs_vad
def test_windowed_marblenet_agrees_with_onnxruntime_on_whole_clips(marblenet):
    clips = sorted(glob.glob(os.path.join(AUDIO, "*.wav")))[:6]
    for clip in clips:
        samples, _ = load_audio(clip, 16000)
        expected = _onnxruntime_scores(samples)
        got = _feed(MarbleNetVAD(marblenet), samples)
        assert abs(len(got) - len(expected)) <= 1, clip
        n = min(len(got), len(expected))
        # the graph removes the mean of its whole input, so windows differ slightly from one whole run
        agreement = ((got[:n] > 0.5) == (expected[:n] > 0.5)).mean()
        assert agreement >= 0.97, (clip, agreement)


@needs_vad
def test_marblenet_cannot_stream_frame_by_frame_and_says_why(marblenet):
    from tinyasr.errors import GraphError
    from tinyasr.engine.offline import load_model
    from tinyasr.engine.streaming import StreamPlan

    with pytest.raises(GraphError, match=r"node '.*' \(ReduceMean\) cannot stream"):
        StreamPlan.from_model(load_model(marblenet))


@needs_vad
@needs_audio
def test_energy_vad_agrees_with_marblenet_on_real_speech():
    agreements = []
    for clip in sorted(glob.glob(os.path.join(AUDIO, "*.wav"))):
        samples, _ = load_audio(clip, 16000)
        expected = _onnxruntime_scores(samples) > 0.5
        got = _feed(EnergyVAD(16000), samples) > 0.5
        n = min(len(got), len(expected))
        agreements.append((got[:n] == expected[:n]).mean())
    # a fallback, not a model: measured 0.87 on average, 0.78 at worst over the 15 clips
    assert np.mean(agreements) >= 0.82 and min(agreements) >= 0.7, agreements


def test_segmenter_rules():
    config = VADConfig(min_speech=0.1, min_silence=0.3, speech_pad=0.04, max_segment=2.0, cut_overlap=0.5)
    frames = np.zeros(600)
    frames[10:13] = 1.0  # 60 ms: shorter than min_speech, ignored
    frames[50:100] = 1.0  # speech with a 200 ms gap (bridged) ...
    frames[110:150] = 1.0  # ... then 300 ms of silence closes it
    frames[200:400] = 1.0  # 4 s of speech: cut at max_segment, each piece from cut_overlap (25 frames) before
    segmenter = Segmenter(config)
    whole = segmenter.accept(frames) + segmenter.finish()
    pieces = Segmenter(config)
    streamed = [s for i in range(0, 600, 7) for s in pieces.accept(frames[i:i + 7])] + pieces.finish()
    assert whole == streamed
    f = FRAME_SECONDS
    expected = [(50 * f - 0.04, 150 * f + 0.04), (200 * f - 0.04, 300 * f + 0.04), (275 * f - 0.04, 375 * f + 0.04),
                (350 * f - 0.04, 400 * f + 0.04)]
    np.testing.assert_allclose(whole, expected, atol=1e-9)


def _write_long_file(path, minutes=10, rate=16000, every=60.0):
    """Quiet noise with the 'go forward' clip every ``every`` s, written block by block; returns the clip spans."""
    speech, _ = load_audio(GOFORWARD, rate)
    rng = np.random.default_rng(0)
    spans = []
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for start in np.arange(0, minutes * 60, every):
            block = (1e-3 * rng.standard_normal(int(every * rate))).astype(np.float32)
            at = int(rate * 20.0)
            block[at:at + speech.size] += speech
            spans.append((start + 20.0, start + 20.0 + speech.size / rate))
            out.write(block)
    return spans


@needs_audio
def test_transcribe_long_segments_a_ten_minute_file_in_bounded_memory(tmp_path):
    _, tensors, manifest = energy_ctc_parts()
    model_path = tmp_path / "energy.tasr"
    write_model(model_path, manifest, tensors)
    recognizer = Recognizer(model_path)
    recognizer.transcribe(np.zeros(16000, np.float32), sample_rate=16000)  # first-run buffers are not growth
    peaks = {}
    for minutes in (2, 10):
        audio_path = tmp_path / f"long{minutes}.wav"
        spans = _write_long_file(audio_path, minutes=minutes)
        tracemalloc.start()
        try:
            utterances = list(transcribe_long(audio_path, recognizer))
            peaks[minutes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    file_float32_bytes = soundfile.info(str(audio_path)).frames * 4
    # measured: 4.3 MB for 2 min, 4.5 MB for 10 min (38 MB as float32): one block, one segment, one window
    assert peaks[10] < 1.2 * peaks[2] and peaks[10] < file_float32_bytes / 4, (peaks, file_float32_bytes)
    assert len(utterances) == len(spans)
    speech, _ = load_audio(GOFORWARD, 16000)
    for utterance, (start, end) in zip(utterances, spans):
        # the clip's own leading / trailing quiet stretches lie outside the detected speech
        assert start - 0.25 <= utterance.start <= start + 0.6 and end - 0.8 <= utterance.end <= end + 0.25
        assert utterance.result.text.startswith("x")
    # each utterance is the offline transcript of its span of the file
    first = utterances[0]
    samples, _ = soundfile.read(str(audio_path), start=int(first.start * 16000), stop=int(first.end * 16000),
                                dtype="float32")
    assert recognizer.transcribe(samples, sample_rate=16000).text == first.result.text


def test_transcribe_long_defaults_to_the_bundled_model():
    """tinyasr.transcribe_long(path) alone: the bundled digits model, its utterances together saying what one
    transcribe() of the whole sample says (the energy detector splits it at its two longer pauses)."""
    sample = os.path.join(os.path.dirname(tinyasr.__file__), "models", "sample_digits.wav")
    utterances = list(transcribe_long(sample))
    assert len(utterances) > 1
    assert " ".join(u.result.text for u in utterances) == Recognizer().transcribe(sample).text


@needs_audio
def test_transcribe_of_a_long_file_goes_utterance_by_utterance(tmp_path):
    """Past LONG_FILE_SECONDS, Recognizer.transcribe (and so ``tinyasr transcribe``) joins transcribe_long's
    utterances: the same words, times counted from the file's start, inside the spans where the speech is."""
    from tinyasr.pipeline.recognizer import LONG_FILE_SECONDS

    _, tensors, manifest = energy_ctc_parts()
    model_path = tmp_path / "energy.tasr"
    write_model(model_path, manifest, tensors)
    recognizer = Recognizer(model_path)
    audio_path = tmp_path / "long.wav"
    spans = _write_long_file(audio_path, minutes=3, every=45.0)
    assert soundfile.info(str(audio_path)).duration > LONG_FILE_SECONDS
    result = recognizer.transcribe(audio_path)
    utterances = list(transcribe_long(audio_path, recognizer))
    assert result.text == " ".join(u.result.text for u in utterances if u.result.text) and result.text
    assert result.duration == pytest.approx(180.0)
    assert len(result.words) == sum(len(u.result.words) for u in utterances)
    for word in result.words:
        assert any(start - 0.5 <= word.start < word.end <= end + 0.5 for start, end in spans), word
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)


@needs_vad
@needs_audio
def test_transcribe_long_with_the_marblenet_vad(tmp_path, marblenet):
    _, tensors, manifest = energy_ctc_parts()
    write_model(tmp_path / "energy.tasr", manifest, tensors)
    speech, _ = load_audio(GOFORWARD, 16000)
    quiet = (1e-3 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)
    soundfile.write(tmp_path / "two.flac", np.concatenate([quiet, speech, quiet, quiet, speech, quiet]), 16000)
    utterances = list(transcribe_long(tmp_path / "two.flac", Recognizer(tmp_path / "energy.tasr"), vad=marblenet,
                                      block_seconds=0.7))
    starts = [2.0, 2.0 + speech.size / 16000 + 4.0]
    assert len(utterances) == 2
    for utterance, start in zip(utterances, starts):
        assert start - 0.25 <= utterance.start <= start + 0.6  # the clip begins with a short quiet stretch
        assert utterance.end <= start + speech.size / 16000 + 0.25 and utterance.result.text.startswith("x")


# ---------------------------------------------------------------------------
# The speech / no-speech decision in front of decoding (issue 16)

FSDD = os.path.join(AUDIO, "fsdd", "recordings")
needs_fsdd = pytest.mark.skipif(not os.path.isdir(FSDD), reason="shared FSDD recordings not available")
NON_SPEECH_RATE = 16000


def _non_speech(kind: str, seconds: float, rate: int = NON_SPEECH_RATE) -> np.ndarray:
    """Digital silence, white noise at -60 dBFS RMS, or a 440 Hz tone at -6 dBFS (issue 16's three)."""
    n = int(seconds * rate)
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "noise":
        return (1e-3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    return (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate)).astype(np.float32)


def _segments(samples, rate, piece=None):
    detector, segmenter = EnergyVAD(rate), Segmenter()
    probs = _feed(detector, samples, piece or samples.size)
    return segmenter.accept(probs) + segmenter.finish()


def _streamed_text(recognizer, samples, rate, chunk=1280):
    """Every final text of an OnlineStream fed ``samples`` in chunks, endpoints included."""
    stream, texts = recognizer.stream(), []
    for i in range(0, samples.size, chunk):
        stream.accept_waveform(samples[i:i + chunk], rate)
        if stream.is_endpoint:
            texts.append(stream.finalize().text)
    texts.append(stream.finalize().text)
    return " ".join(t for t in texts if t)


@pytest.mark.parametrize("seconds", [1, 5, 20, 60])
@pytest.mark.parametrize("kind", ["silence", "noise", "tone"])
def test_non_speech_gives_no_text_whole_file_and_streaming(kind, seconds, tmp_path):
    """Before: 5 s of zeros read "six one six one", noise "seven four seven", the tone "seven seven"."""
    recognizer = Recognizer()
    samples = _non_speech(kind, seconds)
    path = tmp_path / f"{kind}.wav"
    soundfile.write(path, samples, NON_SPEECH_RATE, subtype="PCM_16")
    result = recognizer.transcribe(path)
    assert (result.text, result.out_of_vocabulary) == ("", False)
    assert _streamed_text(recognizer, samples, NON_SPEECH_RATE) == ""


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_a_steady_tone_is_not_speech_even_after_silence(rate):
    """The energy detector alone calls a loud tone speech until its floor catches up (~0.4 s from the start, 2.7 s
    after silence); the spectral check does not (speech spans of FSDD and the English clips: tone share <= 0.992)."""
    t = np.arange(3 * rate) / rate
    for hz in (100.0, 440.0, 1234.5, 3000.0):
        tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        assert _segments(tone, rate) == [], hz
        assert _segments(np.concatenate([np.zeros(rate, np.float32), tone]), rate) == [], hz


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size", [1600, 1500])  # 5 frames; 4 frames and a part (means from frame sums and samples)
def test_windowed_spans_match_numpy(dtype, size):
    """windowed_spans against numpy's sliding windows in float64: the span ending with each chosen frame, less its
    mean, times the window; the gate's float32 audio and window as well."""
    rng = np.random.default_rng(4)
    frame, window = 320, np.hanning(size)
    audio = rng.standard_normal(size - frame + 20 * frame) + 3.0  # the history before frame 0, then 20 frames
    ends = np.array([0, 3, 4, 19], np.int64)
    spans = np.lib.stride_tricks.sliding_window_view(audio, size)[::frame][ends]
    want = (spans - spans.mean(axis=1, keepdims=True)) * window
    got = windowed_spans(audio.astype(dtype), ends, frame, window.astype(dtype))
    assert got.dtype == np.float32  # the tone check's FFT runs in float32 (fft.power_spectra)
    tolerance = 1e-6 if dtype == np.float64 else 2e-6  # float32 input: its own rounding (~6e-8 of ~6)
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())
    assert windowed_spans(audio.astype(dtype), ends[:0], frame, window.astype(dtype)).shape == (0, size)


def test_tone_share_kernel_matches_cumulative_sums():
    """tonal_spans's running band sum against the band sums taken as differences of cumulative power sums, on
    spectra of noise, of tones (several at once, at the edges of the spectrum) and of bands just below and above
    the share; widths shorter than the band too."""
    rng = np.random.default_rng(3)
    t = np.arange(1600) / 16000.0
    rows = [rng.standard_normal(1600), np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 7990 * t),
            np.sin(2 * np.pi * 3 * t), np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 450 * t),
            np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(1600), np.zeros(1600)]
    spectra = np.fft.rfft(np.array(rows) * np.hanning(1600), axis=1)
    power = np.abs(spectra) ** 2
    for bins in (1, 5, 12):
        total = np.concatenate([np.zeros((len(power), 1)), np.cumsum(power, axis=1)], axis=1)
        share = (total[:, bins:] - total[:, :-bins]).max(axis=1) / np.maximum(total[:, -1], 1e-300)
        for threshold in (0.5, 0.99, 0.995, 0.9999, *share[1:5]):
            want = (total[:, bins:] - total[:, :-bins]).max(axis=1) >= threshold * total[:, -1] + 1e-20
            got = tonal_spans(power, bins, threshold)
            close = np.abs(share - threshold) < 1e-12  # a threshold set at a row's own share: rounding decides
            np.testing.assert_array_equal(got[~close], want[~close])
    narrow = power[:, :3]
    np.testing.assert_array_equal(tonal_spans(np.ascontiguousarray(narrow), 5, 0.999), narrow.sum(1) > 0)


def _near_tones(size, rng):
    """Spans as the gate makes them (mean removed, Hann window) of tones with what puts their share of the power
    around the tone check's 0.995 (and 100 far from it): a second tone 1-60 bins away at 0.05-1.5 % of the power,
    white noise at 20-40 dB SNR, a beat of two tones, an amplitude-modulated tone; at random frequencies,
    fractional bins, DC and Nyquist included."""
    t = np.arange(size)
    rows = []
    for _ in range(100):  # and some that are plainly not tones: harmonic stacks, tones in noise at 0-10 dB SNR
        f0 = rng.uniform(size / 160, size / 40)
        row = sum(rng.uniform(0.2, 1) * np.cos(2 * np.pi * f0 * h * t / size) for h in range(1, 8))
        row = row + 10 ** (-rng.uniform(0, 10) / 20) * rng.standard_normal(size) * rng.integers(2)
        rows.append((row - row.mean()) * np.hanning(size))
    for _ in range(400):
        bin_ = rng.uniform(0, size / 2)
        kind = rng.integers(4)
        row = np.cos(2 * np.pi * bin_ * t / size + rng.uniform(0, 2 * np.pi))
        if kind == 0:
            other = np.clip(bin_ + rng.choice([-1, 1]) * rng.uniform(1, 60), 0, size / 2)
            row = row + np.sqrt(rng.uniform(0.0005, 0.015)) * np.cos(2 * np.pi * other * t / size)
        elif kind == 1:
            row = row + 10 ** (-rng.uniform(20, 40) / 20) * rng.standard_normal(size)
        elif kind == 2:
            row = row + rng.uniform(0.1, 1) * np.cos(2 * np.pi * (bin_ + rng.uniform(-4, 4)) * t / size)
        else:
            row = row * (1 + rng.uniform(0, 0.3) * np.cos(2 * np.pi * rng.uniform(0, 6) * t / size))
        rows.append((row - row.mean()) * np.hanning(size))
    return np.array(rows)


@pytest.mark.parametrize("size", [1600, 800])  # 100 ms at 16 and 8 kHz
def test_broadband_spans_never_clear_a_span_the_fft_finds_tonal(size):
    """The shortcut before the tone check's FFT: on spans whose share of power in 5 adjacent bins lies on both
    sides of 0.995, every span it clears is one the FFT path (float32, tonal_spans) finds not tonal; and its bound
    holds in float64: a span holding >= 0.995 in a band has, at each lag L, a variance of cos(L theta) under its
    power (from circular autocorrelations) <= (pi L 4 / N)^2 + 8 (1 - 0.995)."""
    rng = np.random.default_rng(11)
    spans = _near_tones(size, rng)
    power = np.abs(np.fft.rfft(spans, axis=1)) ** 2
    bands = np.lib.stride_tricks.sliding_window_view(power, 5, axis=1).sum(axis=2).max(axis=1)
    share = bands / power.sum(axis=1)
    assert ((share > 0.99) & (share < 0.995)).sum() > 20 and ((share >= 0.995) & (share < 0.999)).sum() > 20
    as_float32 = spans.astype(np.float32)
    fft_says = tonal_spans(power_spectra(as_float32), 5, 0.995)
    cleared = broadband_spans(as_float32, 5, 0.995)
    assert not (cleared & fft_says).any()
    assert fft_says.sum() > 100 and cleared.sum() > 20  # both answers are exercised
    r = lambda lag: np.einsum("ij,ij->i", spans, np.roll(spans, -lag, axis=1))
    for lag in (1, size // 100, size // 50, size // 10):
        a, a2 = r(lag) / r(0), r(2 * lag) / r(0)
        spread = (1 + a2) / 2 - a ** 2
        bound = (np.pi * lag * 4 / size) ** 2 + 8 * (1 - 0.995)
        assert (spread[share >= 0.995] <= bound + 1e-12).all(), lag


def test_broadband_spans_edge_rows():
    """Silence is cleared (no band holds power: tonal_spans says no too); NaN is left to the FFT; a share of 2
    (the tone check off) clears every row with power, a share of 0 none."""
    rng = np.random.default_rng(2)
    rows = np.stack([np.zeros(1600), np.full(1600, np.nan), rng.standard_normal(1600),
                     np.cos(np.arange(1600) * 0.3) * np.hanning(1600)]).astype(np.float32)
    np.testing.assert_array_equal(broadband_spans(rows, 5, 0.995), [True, False, True, False])
    assert broadband_spans(rows[2:], 5, 2.0).all() and not broadband_spans(rows[1:], 5, 0.0).any()


@needs_audio
def test_energy_vad_frames_the_same_with_and_without_the_fft_shortcut(monkeypatch):
    """The gate on speech (English clips, FSDD digits), tones and noise gives the same probabilities whether spans
    are cleared by broadband_spans or all go to the FFT; the shortcut clears >= 90 % of the speech's spans.  The
    compiled energy_frames against its Python source run with broadband_spans replaced."""
    import tinyasr.kernels.energy as energy
    import tinyasr.pipeline.vad as vad

    clips = sorted(glob.glob(os.path.join(AUDIO, "*.wav")))[:4]
    clips += sorted(glob.glob(os.path.join(AUDIO, "fsdd", "**", "*.wav"), recursive=True))[:8]
    speech = np.concatenate([load_audio(clip, 16000)[0] for clip in clips])
    t = np.arange(16000) / 16000
    samples = np.concatenate([speech] + [(0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
                                         for hz in (150.0, 997.0, 5000.0)]
                             + [np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.05])
    with_shortcut = _feed(EnergyVAD(16000), samples)
    counts = []

    def counted(spans, bins, share):
        cleared = broadband_spans(spans, bins, share)
        counts.append((cleared.sum(), len(cleared)))
        return cleared

    monkeypatch.setattr(vad, "energy_frames", energy.energy_frames.py_func)  # its calls looked up as it runs
    monkeypatch.setattr(energy, "broadband_spans", counted)
    _feed(EnergyVAD(16000), speech)
    cleared, looked_at = np.sum(counts, axis=0)
    assert looked_at > 1000 and cleared >= 0.9 * looked_at
    monkeypatch.setattr(energy, "broadband_spans", lambda spans, bins, share: np.zeros(len(spans), bool))
    without = _feed(EnergyVAD(16000), samples)
    np.testing.assert_array_equal(with_shortcut, without)
    assert (without[-4 * 50:-50] < 0.5).all()  # the tones: not speech (their spans went to the FFT)


@needs_audio
def test_energy_vad_gives_the_same_frames_whatever_the_pieces():
    samples, _ = load_audio(GOFORWARD, 16000)
    whole = _feed(EnergyVAD(16000), samples, samples.size)
    for piece in (160, 1234, 16000):
        np.testing.assert_array_equal(_feed(EnergyVAD(16000), samples, piece), whole)


@needs_audio
def test_energy_vad_probabilities_match_a_numpy_reference():
    """The floor is np.nanpercentile over the window of levels ending at each frame (the prior's slots, then
    NaN, before the start); the tone check is off (tone_share 2 is never reached) so the logistic is seen."""
    samples, _ = load_audio(GOFORWARD, 16000)
    detector = EnergyVAD(16000, tone_share=2.0)
    frames = samples[:samples.size // detector.frame * detector.frame].astype(np.float64).reshape(-1, detector.frame)
    levels = 10.0 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
    window = detector.floor_frames
    prior = min(detector.prior_frames, window - 1)
    padded = np.concatenate([np.full(window - 1 - prior, np.nan), np.full(prior, detector.prior_db), levels])
    floor = np.nanpercentile(np.lib.stride_tricks.sliding_window_view(padded, window), detector.percentile, axis=1)
    margin = levels - np.maximum(floor + detector.snr_db, detector.min_db)
    expected = 1.0 / (1.0 + np.exp(-margin / 2.0))
    np.testing.assert_allclose(_feed(detector, samples, 1600), expected, rtol=0, atol=1e-12)


@needs_fsdd
def test_every_tightly_cut_fsdd_clip_holds_speech():
    """FSDD cuts its clips at the word, so there is no quiet lead-in to set the noise floor: before the prior
    floor, 594 of the 3,000 clips had no speech segment, and a transcript gated on speech would be empty."""
    missing = []
    for path in sorted(glob.glob(os.path.join(FSDD, "*.wav"))):
        samples, rate = soundfile.read(path, dtype="float32")
        if not _segments(samples, rate):
            missing.append(os.path.basename(path))
    assert not missing, missing


def test_quiet_speech_still_passes_the_gate():
    """The bundled sample 8 dB quieter still reads the same: its quietest digit ("two", -38 dBFS at the 20 ms
    frame's loudest as recorded) then peaks at -46 dBFS and three of its frames stay above the detector's
    -50 dBFS floor (the middle of its 2 dB ramp): the three a segment needs.  At 10 dB quieter it sits on
    that ramp (-48 to -51 dBFS) and the gate hears fewer than three frames of it: the word is then dropped
    unless the model's token for it falls within the cover of a neighbouring segment (the 96-channel model's
    CTC peak, before the word, did; the 160-channel one peaks inside it)."""
    sample = os.path.join(os.path.dirname(tinyasr.__file__), "models", "sample_digits.wav")
    samples, rate = load_audio(sample)
    recognizer = Recognizer()
    expected = recognizer.transcribe(sample).text
    assert len(expected.split()) == 6
    quieter = samples * 10 ** (-8 / 20)
    assert recognizer.transcribe(quieter, sample_rate=rate).text == expected
    assert _streamed_text(recognizer, quieter, rate) == expected
