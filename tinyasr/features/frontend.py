"""NeMo-compatible audio feature front end (log-mel and MFCC) in plain numpy.

The numbers follow NeMo's ``AudioToMelSpectrogramPreprocessor`` (FilterbankFeatures)
and ``AudioToMFCCPreprocessor`` (torchaudio-style MFCC) in eval mode, because a
converted model only works on the features it was trained on.  Every choice NeMo
makes implicitly (symmetric window, zero-padded centred STFT, the feature-length
rule, masking before normalisation) is an explicit ``FrontendConfig`` field, so a
front end baked into another graph (e.g. the MarbleNet VAD's mean removal) can be
described too.  The STFT, power and filterbank are computed in float64 and the
result returned as float32: this is more exact than NeMo's float32 torch path and
identical on every platform.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

import numpy as np

from tinyasr.audio.io import MIN_AUDIO_RATE
from tinyasr.audio.resample import MAX_SAMPLE_RATE
from tinyasr.errors import AudioError, TinyASRError
from tinyasr.format.values import is_real
from tinyasr.kernels.fft import lanes_take, power_spectra
from tinyasr.kernels.fft import plan as fft_plan
from tinyasr.kernels.spectrum import (
    band_spans,
    emphasized_after,
    emphasized_padded,
    mel_bands,
    mel_spectra,
    normalized_features,
    windowed_frames,
)

WINDOWS = ("hann", "hamming", "blackman", "bartlett", "none")
NORMALIZE = ("per_feature", "all_features", None)
NORMALIZE_CODES = {None: 0, "per_feature": 1, "all_features": 2}  # kernels/spectrum.normalized_features
STD_GUARD = 1e-5  # NeMo's CONSTANT added to the feature std
# STFT frames processed at once: as many as fill BLOCK_BYTES of float64 frames (128 at n_fft 512).  Each
# block's temporaries (windowed frames, spectrum, power, mel) then stay in L2 and come back from the allocator
# already mapped: with 2,048-frame blocks, the fresh 4 MB temporaries of a 10 s file cost more in page faults
# than in arithmetic (13.6 ms against 4.6 ms for the whole front end; benchmarks/results/transducer.md).
BLOCK_BYTES = 1 << 19
# Upper bounds on sizes a model file may ask for: far above any real front end, low enough that a hostile
# manifest cannot make the filterbank or the padding exhaust memory (512 x 16385 float64 = 64 MiB at most).
MAX_FFT = 32768
MAX_MELS = 512
MAX_PAD_TO = 1024
# STFT values per second of audio (frames per second x n_fft): NeMo's 100 x 512 is 51,200; a hop of 1 sample
# with n_fft 32768 (each within its cap) would be 5e8 and hang or exhaust memory, so the product is capped.
MAX_STFT_VALUES_PER_SECOND = 1 << 24
# Real-valued keys: (lowest, highest) a front end can sensibly use; a value past them (preemph 1e300) is refused.
REAL_RANGES = {"lowfreq": (0.0, MAX_SAMPLE_RATE), "highfreq": (0.0, MAX_SAMPLE_RATE), "preemph": (0.0, 1.0),
               "mag_power": (0.0, 4.0), "log_zero_guard_value": (0.0, 1.0), "dither": (0.0, 1.0),
               "pad_value": (-1e6, 1e6), "pad_seconds": (0.0, 10.0)}


@dataclass(frozen=True)
class FrontendConfig:
    """Feature front end settings; defaults are NeMo's AudioToMelSpectrogramPreprocessor.

    kind: "mel" (NeMo FilterbankFeatures: valid frames = floor(N / hop), frames past
      them set to pad_value and excluded from normalisation) or "mfcc" (NeMo's MFCC:
      valid frames = ceil(N / hop), nothing masked, DCT-II of the log mel to n_mfcc).
    window_periodic: NeMo's mel front end uses symmetric windows (False); torchaudio's
      MFCC uses periodic ones (True).
    center / pad_mode: pad n_fft // 2 on both sides ("constant" zeros for NeMo mel,
      "reflect" for torchaudio MFCC).  exact_pad: NeMo's exact_pad=True, i.e. no
      centring but (n_fft - hop) // 2 zeros on both sides.
    remove_mean: subtract the mean of the whole signal before pre-emphasis (not a NeMo
      option; the MarbleNet frame-VAD ONNX graph does it).
    dither: recorded from the source model; inference never adds noise.
    pad_seconds: digital silence added at both ends of the audio before anything else (not a NeMo option).
      A model trained on speech with silence around it misreads a file cut tight to the speech (the digits
      model, recipes/digits/); this pads every file and stream the same way.  Feature frame i then starts
      pad_seconds before the audio's frame i; the Recognizer and OnlineStream report times from the audio.
    """

    kind: str = "mel"
    sample_rate: int = 16000
    win_length: int = 320
    hop_length: int = 160
    n_fft: int = 512
    window: str = "hann"
    window_periodic: bool = False
    n_mels: int = 64
    n_mfcc: Optional[int] = None
    lowfreq: float = 0.0
    highfreq: Optional[float] = None
    mel_scale: str = "slaney"
    mel_norm: Optional[str] = "slaney"
    remove_mean: bool = False
    preemph: Optional[float] = 0.97
    center: bool = True
    pad_mode: str = "constant"
    exact_pad: bool = False
    mag_power: float = 2.0
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0**-24
    normalize: Optional[str] = "per_feature"
    dither: float = 0.0
    pad_to: int = 16
    pad_value: float = 0.0
    pad_seconds: float = 0.0

    def __post_init__(self):
        def bad(key, why):
            shown = repr(getattr(self, key))
            raise TinyASRError(f"frontend config: {key}={shown if len(shown) <= 40 else shown[:37] + '...'} {why}")

        def check_int(key, minimum, maximum):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
                bad(key, f"must be an integer from {minimum} to {maximum}")

        def check_real(key, allow_none=False):
            value = getattr(self, key)
            if value is None and allow_none:
                return
            low, high = REAL_RANGES[key]
            if not is_real(value) or not low <= value <= high:
                bad(key, f"must be a number from {low:g} to {high:g}" + (" or null" if allow_none else ""))

        def check_choice(key, choices):
            if getattr(self, key) not in choices:
                bad(key, f"is not one of {list(choices)}")

        check_choice("kind", ("mel", "mfcc"))
        for key, minimum, maximum in (("sample_rate", MIN_AUDIO_RATE, MAX_SAMPLE_RATE), ("win_length", 1, MAX_FFT),
                                      ("hop_length", 1, MAX_FFT), ("n_fft", 1, MAX_FFT), ("n_mels", 1, MAX_MELS),
                                      ("pad_to", 0, MAX_PAD_TO)):
            check_int(key, minimum, maximum)
        for key in ("lowfreq", "mag_power", "log_zero_guard_value", "dither", "pad_value", "pad_seconds"):
            check_real(key)
        for key in ("highfreq", "preemph"):
            check_real(key, allow_none=True)
        for key in ("window_periodic", "remove_mean", "center", "exact_pad", "log"):
            check_choice(key, (True, False))
        check_choice("window", WINDOWS)
        check_choice("mel_scale", ("slaney", "htk"))
        check_choice("mel_norm", ("slaney", None))
        check_choice("pad_mode", ("constant", "reflect"))
        check_choice("log_zero_guard_type", ("add", "clamp"))
        check_choice("normalize", NORMALIZE)
        if self.sample_rate / self.hop_length * self.n_fft > MAX_STFT_VALUES_PER_SECOND:
            bad("n_fft", f"with hop_length={self.hop_length} at {self.sample_rate} Hz needs "
                         f"{self.sample_rate / self.hop_length * self.n_fft:.3g} STFT values per second of audio "
                         f"(at most {MAX_STFT_VALUES_PER_SECOND})")
        if self.win_length > self.n_fft:
            bad("win_length", f"exceeds n_fft={self.n_fft}")
        nyquist = self.sample_rate / 2
        top = nyquist if self.highfreq is None else self.highfreq
        if not 0 <= self.lowfreq < top <= nyquist:
            bad("highfreq", f"with lowfreq={self.lowfreq} must satisfy 0 <= lowfreq < highfreq <= {nyquist}")
        if self.mag_power <= 0:
            bad("mag_power", "must be > 0")
        if self.log_zero_guard_value <= 0:
            bad("log_zero_guard_value", "must be > 0")
        if self.exact_pad and self.center:
            bad("exact_pad", "and center=True exclude each other (exact_pad replaces centring)")
        if self.exact_pad and self.hop_length % 2:
            bad("hop_length", "must be even with exact_pad (as NeMo requires)")
        if self.kind == "mfcc":
            check_int("n_mfcc", 1, MAX_MELS)
            if self.n_mfcc > self.n_mels:
                bad("n_mfcc", f"exceeds n_mels={self.n_mels}")
            if not self.log:
                bad("log", "must be true for kind 'mfcc' (the dB variant is not supported)")
            if self.normalize is not None or self.pad_to:
                bad("normalize" if self.normalize is not None else "pad_to",
                    "is not part of NeMo's MFCC front end (use normalize=None, pad_to=0 with kind 'mfcc')")
        elif self.n_mfcc is not None:
            bad("n_mfcc", "is only used with kind 'mfcc'")

    @property
    def pad_samples(self) -> int:
        """Samples of silence added at each end of the audio (pad_seconds at the sample rate)."""
        return int(round(self.pad_seconds * self.sample_rate))

    @property
    def num_features(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "FrontendConfig":
        """Strict inverse of to_dict: unknown keys are errors, missing keys take defaults."""
        if not isinstance(d, dict):
            raise TinyASRError(f"frontend config must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(FrontendConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TinyASRError(f"frontend config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return FrontendConfig(**d)

    @staticmethod
    def from_nemo(cfg: Dict[str, Any]) -> "FrontendConfig":
        """Map a NeMo ``preprocessor`` config section (as in model_config.yaml) to a FrontendConfig."""
        return _from_nemo(cfg)


# NeMo constructor arguments that have no effect at inference, or only the value we support.
_NEMO_IGNORED = {"_target_", "rng", "nb_max_freq", "use_grads", "use_torchaudio"}
_NEMO_REQUIRED_VALUE = {"frame_splicing": 1, "nb_augmentation_prob": 0.0, "stft_exact_pad": False, "stft_conv": False}
_NEMO_MEL_KEYS = {"sample_rate", "window_size", "window_stride", "n_window_size", "n_window_stride", "window",
                  "normalize", "n_fft", "preemph", "features", "lowfreq", "highfreq", "log", "log_zero_guard_type",
                  "log_zero_guard_value", "dither", "pad_to", "exact_pad", "pad_value", "mag_power", "mel_norm"}
_NEMO_MFCC_KEYS = {"sample_rate", "window_size", "window_stride", "n_window_size", "n_window_stride", "window",
                   "n_fft", "lowfreq", "highfreq", "n_mels", "n_mfcc", "dct_type", "norm", "log"}


def _from_nemo(cfg: Dict[str, Any]) -> FrontendConfig:
    if not isinstance(cfg, dict):
        raise TinyASRError(f"NeMo preprocessor config must be a mapping, got {type(cfg).__name__}")
    target = str(cfg.get("_target_", "AudioToMelSpectrogramPreprocessor")).rsplit(".", 1)[-1]
    if target not in ("AudioToMelSpectrogramPreprocessor", "AudioToMFCCPreprocessor"):
        raise TinyASRError(f"NeMo preprocessor _target_={cfg.get('_target_')!r} is not supported "
                           "(supported: AudioToMelSpectrogramPreprocessor, AudioToMFCCPreprocessor)")
    is_mfcc = target == "AudioToMFCCPreprocessor"
    known = _NEMO_MFCC_KEYS if is_mfcc else _NEMO_MEL_KEYS
    for key, value in cfg.items():
        if key in _NEMO_IGNORED or key in known:
            continue
        if key in _NEMO_REQUIRED_VALUE:
            if value != _NEMO_REQUIRED_VALUE[key] and value is not None:
                raise TinyASRError(f"NeMo preprocessor {key}={value!r} is not supported "
                                   f"(only {_NEMO_REQUIRED_VALUE[key]!r})")
            continue
        raise TinyASRError(f"NeMo preprocessor key {key!r} (value {value!r}) is not supported by {target}")

    sample_rate = int(cfg.get("sample_rate", 16000))
    # NeMo: n_window_size = int(window_size * sample_rate) unless given in samples.
    win = cfg.get("n_window_size") or int(cfg.get("window_size", 0.02) * sample_rate)
    hop = cfg.get("n_window_stride") or int(cfg.get("window_stride", 0.01) * sample_rate)
    n_fft = cfg.get("n_fft") or 2 ** math.ceil(math.log2(win))
    window = cfg.get("window", "hann")
    window = "none" if window is None else window
    common = dict(sample_rate=sample_rate, win_length=int(win), hop_length=int(hop), n_fft=int(n_fft),
                  window=window, lowfreq=float(cfg.get("lowfreq") or 0.0),
                  highfreq=cfg.get("highfreq") or None)  # NeMo: highfreq or sample_rate / 2
    if is_mfcc:
        if cfg.get("dct_type", 2) != 2:
            raise TinyASRError(f"NeMo preprocessor dct_type={cfg['dct_type']!r} is not supported (only 2)")
        if cfg.get("norm", "ortho") != "ortho":
            raise TinyASRError(f"NeMo preprocessor norm={cfg['norm']!r} is not supported (only 'ortho')")
        if not cfg.get("log", True):
            raise TinyASRError("NeMo preprocessor log=False (MFCC of dB mels) is not supported")
        return FrontendConfig(kind="mfcc", window_periodic=True, n_mels=int(cfg.get("n_mels", 64)),
                              n_mfcc=int(cfg.get("n_mfcc", 64)), mel_scale="htk", mel_norm=None, preemph=None,
                              center=True, pad_mode="reflect", mag_power=2.0, log=True, log_zero_guard_type="add",
                              log_zero_guard_value=1e-6, normalize=None, dither=0.0, pad_to=0, **common)
    guard = cfg.get("log_zero_guard_value", 2.0**-24)
    if isinstance(guard, str):  # NeMo accepts "tiny" / "eps" of float32
        if guard not in ("tiny", "eps"):
            raise TinyASRError(f"NeMo preprocessor log_zero_guard_value={guard!r} is not supported "
                               "(a number, 'tiny' or 'eps')")
        guard = float(getattr(np.finfo(np.float32), guard))
    normalize = cfg.get("normalize", "per_feature")
    if normalize not in NORMALIZE:
        raise TinyASRError(f"NeMo preprocessor normalize={normalize!r} is not supported (per_feature, "
                           "all_features or null)")
    pad_to = cfg.get("pad_to", 16)
    if not isinstance(pad_to, int) or isinstance(pad_to, bool):
        raise TinyASRError(f"NeMo preprocessor pad_to={pad_to!r} is not supported (an integer >= 0)")
    exact_pad = bool(cfg.get("exact_pad", False))
    preemph = cfg.get("preemph", 0.97)
    return FrontendConfig(kind="mel", window_periodic=False, n_mels=int(cfg.get("features", 64)),
                          mel_scale="slaney", mel_norm=cfg.get("mel_norm", "slaney"),
                          preemph=None if preemph is None else float(preemph), center=not exact_pad,
                          pad_mode="constant", exact_pad=exact_pad, mag_power=float(cfg.get("mag_power", 2.0)),
                          log=bool(cfg.get("log", True)), log_zero_guard_type=cfg.get("log_zero_guard_type", "add"),
                          log_zero_guard_value=float(guard), normalize=normalize,
                          dither=float(cfg.get("dither", 1e-5)), pad_to=pad_to,
                          pad_value=float(cfg.get("pad_value", 0.0)), **common)


def window_function(name: str, length: int, periodic: bool) -> np.ndarray:
    """torch.*_window(length, periodic) in float64; "none" is a rectangular window."""
    if name == "none" or length == 1:
        return np.ones(length)
    denom = length if periodic else length - 1
    phase = 2.0 * np.pi * np.arange(length) / denom
    if name == "hann":
        return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    if name == "blackman":
        return 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2.0 * phase)
    if name == "bartlett":
        return 1.0 - np.abs(2.0 * np.arange(length) / denom - 1.0)
    raise TinyASRError(f"unknown window {name!r}; supported: {list(WINDOWS)}")


def hz_to_mel(hz, scale: str):
    """Hz -> mel: "htk" is 2595 log10(1 + f/700); "slaney" is linear below 1 kHz, log above (librosa)."""
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    linear = hz / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / logstep
    return np.where(hz >= 1000.0, above, linear)


def mel_to_hz(mel, scale: str):
    """Inverse of hz_to_mel."""
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(logstep * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None,
                   scale: str = "slaney", norm: Optional[str] = "slaney") -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] in float64, as librosa.filters.mel.

    With scale="htk", norm=None this is also torchaudio's melscale_fbanks (transposed).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n_mels + 2), scale)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":  # equal area: each triangle scaled by 2 / its width in Hz
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def dct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """Orthonormal DCT-II [n_mfcc, n_mels]: mfcc = dct_matrix @ log_mel (torchaudio create_dct(norm='ortho').T)."""
    k = np.arange(n_mfcc)[:, None]
    n = np.arange(n_mels)[None, :]
    basis = np.cos(np.pi / n_mels * (n + 0.5) * k) * np.sqrt(2.0 / n_mels)
    basis[0] *= 1.0 / np.sqrt(2.0)
    return basis


def valid_frame_count(num_samples: int, config: FrontendConfig) -> int:
    """NeMo's feature length: ceil(N / hop) for MFCC; for mel (N + padding - n_fft) // hop, which is
    floor(N / hop) with centring and one less than the number of STFT frames in every case.  N counts the
    ``num_samples`` of audio and the config's pad_samples at both ends."""
    num_samples = num_samples + 2 * config.pad_samples
    if config.kind == "mfcc":
        return -(-num_samples // config.hop_length)
    if config.exact_pad:
        pad = 2 * ((config.n_fft - config.hop_length) // 2)
    else:
        pad = 2 * (config.n_fft // 2) if config.center else 0
    return (num_samples + pad - config.n_fft) // config.hop_length


def padded_window(config: FrontendConfig) -> np.ndarray:
    """The win_length window centred in n_fft zeros, as torch.stft places it."""
    window = np.zeros(config.n_fft)
    left = (config.n_fft - config.win_length) // 2
    window[left:left + config.win_length] = window_function(config.window, config.win_length, config.window_periodic)
    return window


def _prepare_signal(samples: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Mean removal, pre-emphasis and STFT padding of the whole signal, in float64, in NeMo's order."""
    x = samples.astype(np.float64) if config.remove_mean or not config.center else samples
    if config.remove_mean:
        x = x - x.mean()
    if config.center:  # pre-emphasis and padding in one pass (exact_pad is never centred)
        half = config.n_fft // 2
        if config.pad_mode == "reflect" and x.size <= half:
            raise AudioError(f"audio of {x.size} samples is too short for reflect padding of {half} samples "
                             f"(n_fft={config.n_fft}); need at least {half + 1}")
        return emphasized_padded(x, config.preemph or 0.0, half, config.pad_mode == "reflect")
    if config.exact_pad:  # NeMo pads before pre-emphasis here, then zeroes padded positions >= N,
        x = np.pad(x, (config.n_fft - config.hop_length) // 2)  # which drops the last pad real samples
    if config.preemph is not None:
        x = emphasized_after(np.zeros(0), x, config.preemph, 0.0)
        if config.exact_pad:
            x[samples.size:] = 0.0
    return x


class FeatureCore:
    """Frames -> window -> |FFT|^mag_power -> mel -> log -> (DCT): the chain the offline and the streaming
    front ends share, so both compute every frame with the same numbers.

    What is left to each path is how the signal is padded and pre-emphasised (whole signal / carried samples)
    and how frames are normalised (over the utterance / running or fixed statistics).
    """

    def __init__(self, config: FrontendConfig):
        self.config = config
        self.window = padded_window(config)
        self.filterbank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.lowfreq,
                                         config.highfreq, config.mel_scale, config.mel_norm)
        self.band_spans = band_spans(self.filterbank)
        self.dct = dct_matrix(config.n_mfcc, config.n_mels) if config.kind == "mfcc" else None
        self._plan = fft_plan(config.n_fft)  # None: numpy's FFT (power_spectra)
        self._block = max(1, BLOCK_BYTES // (8 * config.n_fft))

    def frames_in(self, samples: int) -> int:
        """How many whole STFT frames a padded signal of ``samples`` samples holds."""
        return max(0, (samples - self.config.n_fft) // self.config.hop_length + 1)

    def __call__(self, signal: np.ndarray, count: Optional[int] = None) -> np.ndarray:
        """Features float64 [num_features, n] of the first ``count`` frames of ``signal`` (default: all complete
        ones), a pre-emphasised, padded float64 signal whose frame i starts at sample i * hop_length."""
        cfg = self.config
        complete = self.frames_in(signal.size)
        count = complete if count is None else max(0, min(count, complete))
        mel, block, plan = np.empty((cfg.n_mels, count)), self._block, self._plan
        if lanes_take(plan, count, np.float64):
            mel_spectra(signal, count, cfg.hop_length, self.window, self.filterbank, self.band_spans,
                        cfg.mag_power / 2, block, mel, plan.radices, plan.twiddle_re, plan.twiddle_im, plan.offsets,
                        plan.split_re, plan.split_im)
        else:  # no plan for this n_fft, or too few frames for the lanes kernel on this CPU: numpy's FFT
            for start in range(0, count, block):
                frames = windowed_frames(signal, start * cfg.hop_length, min(block, count - start), cfg.hop_length,
                                         self.window)
                mel_bands(power_spectra(frames, bin_major=True), self.filterbank, self.band_spans, cfg.mag_power / 2,
                          mel, start)
        if cfg.log:
            guard = cfg.log_zero_guard_value
            if cfg.log_zero_guard_type == "add":
                np.log(np.add(mel, guard, out=mel), out=mel)
            else:
                np.log(np.maximum(mel, guard, out=mel), out=mel)
        return mel if self.dct is None else self.dct @ mel


@functools.lru_cache(maxsize=16)
def feature_core(config: FrontendConfig) -> FeatureCore:
    """The FeatureCore of ``config``, made once: its filterbank and window cost ~0.8 ms, 0.5 % of transcribing
    10 s with Citrinet-256 (AMD EPYC Zen 1).  Read-only after it is made, so calls and threads share it."""
    return FeatureCore(config)


def padded_frame_count(frames: int, config: FrontendConfig) -> int:
    """NeMo's mel front end pads the features with pad_value to a multiple of pad_to frames (0: no padding)."""
    if config.kind == "mel" and config.pad_to > 0:
        return -(-frames // config.pad_to) * config.pad_to
    return frames


def compute_features(samples: np.ndarray, config: FrontendConfig) -> Tuple[np.ndarray, int]:
    """Features [num_features, T] float32 and the number of valid frames, exactly as NeMo in eval mode.

    ``samples`` is 1-D audio at config.sample_rate (see tinyasr.audio.io for loading and
    resampling), padded with pad_seconds of zeros at both ends first.  For kind "mel", frames from
    the valid count on hold pad_value and T is padded with pad_value to a multiple of pad_to.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioError(f"compute_features expects 1-D mono samples, got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"compute_features expects float samples, got {samples.dtype} "
                         "(convert with tinyasr.audio.io.as_float32_mono)")
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio samples contain NaN or Inf")
    valid = valid_frame_count(samples.size, config)
    if valid < 1:
        raise AudioError(f"audio of {samples.size} samples is too short: at least hop_length={config.hop_length} "
                         "samples are needed for one feature frame")
    given = samples.size
    if config.pad_samples:
        samples = np.pad(samples, config.pad_samples)
    x = _prepare_signal(samples, config)
    if x.size < config.n_fft:
        raise AudioError(f"audio of {given} samples is shorter than one STFT frame (n_fft={config.n_fft})")
    features = feature_core(config)(x)
    if config.kind == "mfcc":
        return features.astype(np.float32), valid
    return normalized_features(features, valid, NORMALIZE_CODES[config.normalize], STD_GUARD, config.pad_value,
                               padded_frame_count(features.shape[1], config)), valid
