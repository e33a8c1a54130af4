"""Spoken digit strings composed from single-digit FSDD recordings.

FSDD (Free Spoken Digit Dataset, CC BY-SA 4.0) holds isolated digits:
``{digit}_{speaker}_{index}.wav``, 8 kHz mono, 6 speakers x 10 digits x 50
takes, already trimmed to near-minimal silence.  A digit string is made by
concatenating takes with natural gaps; training strings also get per-digit
gain, coloured noise and a speed change.

Split (speaker-independent evaluation):
- ``lucas`` (the last speaker in speakers.tsv) is held out entirely: a model
  that has heard a voice says little about voices it has not.  His accent
  (German) is still represented in training by ``yweweler``, so the held-out
  figure measures an unseen voice, not an unseen accent.
- training speakers: takes 5-49 train, takes 0-4 (the upstream test split)
  are held back for the "seen speakers" figure.

Features are computed with ``tinyasr.features.frontend.compute_features``, the function
the runtime uses, so training and deployment see identical inputs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

from tinyasr.features.frontend import FrontendConfig, compute_features

SAMPLE_RATE = 8000  # FSDD's native rate, Hz
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCABULARY = list(DIGIT_WORDS)  # CTC blank is index len(VOCABULARY), the last (NeMo convention)
BLANK = len(VOCABULARY)
HELD_OUT_SPEAKER = "lucas"
HELD_BACK_TAKES = range(0, 5)  # upstream FSDD test split

FRONTEND = FrontendConfig(
    sample_rate=SAMPLE_RATE,
    n_fft=256,
    win_length=200,  # 25 ms
    hop_length=80,  # 10 ms
    n_mels=64,
    lowfreq=0.0,
    highfreq=4000.0,
    preemph=0.97,
    normalize="per_feature",
    pad_to=0,
    # 0.1 s of digital silence at both ends of every file, in training as at run time (issue 16): a file cut
    # tight to the speech then reads like the padded strings the model learned; 0.1 beat 0.2 and 0.3 s on the
    # bundled network (recipes/digits/README.md, "Front-end padding")
    pad_seconds=0.1,
)


@dataclass(frozen=True)
class Clip:
    digit: int
    speaker: str
    take: int
    samples: np.ndarray  # float32, [n] at SAMPLE_RATE


def shared_dir() -> str:
    """The shared data: ``$TINYASR_SHARED`` when set (as the tests read it), else ``../shared`` beside the repository."""
    if os.environ.get("TINYASR_SHARED"):
        return os.environ["TINYASR_SHARED"]
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.normpath(os.path.join(repo_root, "..", "shared"))


def default_fsdd_dir() -> str:
    """``audio/fsdd`` in the shared data."""
    return os.path.join(shared_dir(), "audio", "fsdd")


def load_fsdd(fsdd_dir: str) -> List[Clip]:
    """Read every recording under ``fsdd_dir/recordings``; names must be ``digit_speaker_take.wav``."""
    paths = sorted(glob.glob(os.path.join(fsdd_dir, "recordings", "*.wav")))
    if not paths:
        raise FileNotFoundError(f"no FSDD recordings found in {os.path.join(fsdd_dir, 'recordings')}")
    clips = []
    for path in paths:
        digit, speaker, take = os.path.basename(path)[:-4].split("_")
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE}")
        clips.append(Clip(int(digit), speaker, int(take), samples.mean(axis=1)))
    return clips


def split(clips: Sequence[Clip]) -> Dict[str, List[Clip]]:
    """``train`` / ``seen_heldback`` (training speakers, takes 0-4) / ``unseen`` (held-out speaker)."""
    parts: Dict[str, List[Clip]] = {"train": [], "seen_heldback": [], "unseen": []}
    for clip in clips:
        if clip.speaker == HELD_OUT_SPEAKER:
            parts["unseen"].append(clip)
        elif clip.take in HELD_BACK_TAKES:
            parts["seen_heldback"].append(clip)
        else:
            parts["train"].append(clip)
    return parts


def by_digit(clips: Sequence[Clip]) -> List[List[Clip]]:
    table: List[List[Clip]] = [[] for _ in DIGIT_WORDS]
    for clip in clips:
        table[clip.digit].append(clip)
    if not all(table):
        missing = [DIGIT_WORDS[d] for d, takes in enumerate(table) if not takes]
        raise ValueError(f"no recordings of {missing}")
    return table


# ---------------------------------------------------------------------------
# composition and augmentation


def _silence(rng: np.random.Generator, low_s: float, high_s: float) -> np.ndarray:
    return np.zeros(int(rng.uniform(low_s, high_s) * SAMPLE_RATE), dtype=np.float32)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.arange(n // 2 + 1, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch moves with it, like tape); linear interpolation."""
    n_out = int(round(len(samples) / factor))
    positions = np.arange(n_out) * factor
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


EDGE_PAD_S = (0.0, 0.5)  # training: silence before / after a string, from tightly cut to half a second
TIGHT_SINGLE_SHARE = 0.5  # training: single digits with no padding at all, cut like FSDD's files


def augment_audio(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """Speed 0.85-1.15, coloured noise (1/f^0..2) at 10-40 dB SNR and a random peak level 0.1-0.9."""
    audio = change_speed(audio, rng.uniform(0.85, 1.15))
    speech_rms = np.sqrt(np.mean(audio[np.abs(audio) > 0] ** 2)) if np.any(audio) else 1.0
    snr_db = rng.uniform(10, 40)
    audio = audio + coloured_noise(rng, len(audio), rng.uniform(0, 2)) * speech_rms * 10 ** (-snr_db / 20)
    return np.clip(audio * (rng.uniform(0.1, 0.9) / (np.abs(audio).max() + 1e-9)), -1.0, 1.0).astype(np.float32)


def compose(
    rng: np.random.Generator, takes: List[List[Clip]], n_digits: int, augment: bool
) -> Tuple[np.ndarray, List[int]]:
    """One digit string: random digits, one random take each, gaps of 50-400 ms.

    ``augment`` (training only) pads each end by 0-0.5 s instead (half of the
    single digits not at all), so files cut tight to the speech are normal,
    and adds per-digit gain (+-6 dB) and ``augment_audio``; evaluation strings
    keep the recordings as they are.
    """
    digits = [int(d) for d in rng.integers(0, 10, size=n_digits)]
    tight = augment and n_digits == 1 and rng.random() < TIGHT_SINGLE_SHARE
    edge = (0.0, 0.0) if tight else EDGE_PAD_S if augment else (0.05, 0.4)
    pieces = [_silence(rng, *edge)]
    for i, digit in enumerate(digits):
        clip = takes[digit][rng.integers(len(takes[digit]))]
        gain = 10 ** (rng.uniform(-6, 6) / 20) if augment else 1.0
        pieces.append(clip.samples * gain)
        pieces.append(_silence(rng, *edge) if i == n_digits - 1 else _silence(rng, 0.05, 0.4))
    audio = np.concatenate(pieces)
    if augment:
        return augment_audio(rng, audio), digits
    return np.clip(audio, -1.0, 1.0).astype(np.float32), digits


def features(samples: np.ndarray) -> Tuple[np.ndarray, int]:
    """Log-mel features [64, T] float32 and the valid frame count, exactly as the runtime computes them."""
    return compute_features(samples, FRONTEND)


def compose_many(
    rng: np.random.Generator, clips: Sequence[Clip], count: int, min_digits: int, max_digits: int, augment: bool
) -> List[Tuple[np.ndarray, List[int]]]:
    """``count`` (audio, digits) strings of ``min_digits``..``max_digits`` digits drawn from ``clips``."""
    takes = by_digit(clips)
    return [compose(rng, takes, int(rng.integers(min_digits, max_digits + 1)), augment) for _ in range(count)]


def words(digits: Sequence[int]) -> str:
    return " ".join(DIGIT_WORDS[d] for d in digits)
