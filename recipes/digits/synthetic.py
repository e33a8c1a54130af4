"""Spoken digits from many synthetic voices (eSpeak NG), to widen five real training voices.

FSDD has six speakers; with one held out, the model hears five voices and
learns their voices as much as their words.  eSpeak NG (a formant
synthesiser, GPL-3.0, shipped with its data by the PyPI package
``espeakng-loader``) can say each digit in hundreds of voices: seven English
accents x ~100 voice variants x random pitch, pitch range and speaking rate.
The clips only serve as training material; nothing synthetic is evaluated and
nothing of eSpeak is shipped or linked by the runtime.

Voices (accent, variant, rate, pitch, pitch range) are drawn from a seeded
generator, so the same seed gives the same voices; eSpeak's own noise sources
(breath, aspiration) make the samples differ slightly from run to run.  Clips
are resampled to 8 kHz, trimmed like FSDD's recordings and peak-normalised.
"""

from __future__ import annotations

import ctypes
import os
from typing import List, Sequence

import numpy as np
from scipy.signal import resample_poly

from recipes.digits.data import DIGIT_WORDS, SAMPLE_RATE, Clip

ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER values
_POS_CHARACTER = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _ESpeak:
    """The few eSpeak NG calls we need, through ctypes, in synchronous mode."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SystemExit("--synthetic-voices needs eSpeak NG: pip install espeakng-loader") from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
        self.rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise from {data_path}")
        self.variants = sorted(os.listdir(os.path.join(data_path, "voices", "!v")))
        self._pieces: List[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library holds a pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, _events) -> int:
        if count > 0:
            self._pieces.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768)
        return 0

    def say(self, text: str, voice: str, words_per_minute: int, pitch: int, pitch_range: int) -> np.ndarray:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in ((_RATE, words_per_minute), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._pieces = []
        encoded = text.encode()
        self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self._lib.espeak_Synchronize()
        return np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)


def _trim(samples: np.ndarray, threshold_db: float = -40.0, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading / trailing samples quieter than ``threshold_db`` below the peak, keeping a short margin."""
    loud = np.flatnonzero(np.abs(samples) > np.abs(samples).max() * 10 ** (threshold_db / 20))
    margin = int(margin_s * SAMPLE_RATE)
    return samples[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def _voices(engine: _ESpeak, rng: np.random.Generator, count: int):
    """``count`` random voices: (accent+variant name, speaking settings)."""
    for _ in range(count):
        voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{engine.variants[rng.integers(len(engine.variants))]}"
        yield voice, dict(
            words_per_minute=int(rng.integers(110, 230)),
            pitch=int(rng.integers(10, 90)),
            pitch_range=int(rng.integers(10, 90)),
        )


def _as_clip(engine: _ESpeak, speech: np.ndarray) -> np.ndarray:
    """eSpeak output -> 8 kHz, trimmed, peak 0.5."""
    divisor = np.gcd(engine.rate, SAMPLE_RATE)
    resampled = resample_poly(speech, SAMPLE_RATE // divisor, engine.rate // divisor).astype(np.float32)
    trimmed = _trim(resampled)
    return trimmed / (np.abs(trimmed).max() + 1e-9) * 0.5


def synthesize_digits(voices: int, seed: int = 0) -> List[Clip]:
    """``voices`` random synthetic voices x the ten digits, as 8 kHz ``Clip``s (speaker ``synth{i}``)."""
    engine = _ESpeak()
    rng = np.random.default_rng(seed)
    clips = []
    for i, (voice, settings) in enumerate(_voices(engine, rng, voices)):
        for digit, word in enumerate(DIGIT_WORDS):
            clips.append(Clip(digit, f"synth{i}", 0, _as_clip(engine, engine.say(word, voice, **settings))))
    return clips


def synthesize_phrases(texts: Sequence[str], seed: int = 0) -> List[Clip]:
    """Each text said by its own random voice, as 8 kHz ``Clip``s (digit -1: no digit; speaker ``phrase{i}``).

    The non-digit speech of ``no_digits``; the voices are drawn like ``synthesize_digits``'s.
    """
    engine = _ESpeak()
    rng = np.random.default_rng(seed)
    return [Clip(-1, f"phrase{i}", 0, _as_clip(engine, engine.say(text, voice, **settings)))
            for i, (text, (voice, settings)) in enumerate(zip(texts, _voices(engine, rng, len(texts))))]
