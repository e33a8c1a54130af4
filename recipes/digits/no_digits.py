"""Training examples that hold no digit: their CTC target is empty.

A model that has only heard digit strings reads digits into anything: the
first bundled model turned 5 s of digital silence into "six one six one", a
440 Hz tone into "seven seven" and a JFK speech into 18 digits.  These
examples show it what is not a digit:

- non-speech (``noise_example``): digital silence, white / pink / brown noise
  at low and loud levels, mains hum (50 or 60 Hz and harmonics), clicks, pure
  and mixed tones, and music-like sequences of notes, alone or mixed.  All
  synthesised: FSDD has no noise, and the shared English clips are the
  out-of-vocabulary test set, so their pauses are not used as room tone.
- non-digit English speech: eSpeak NG voices (``synthetic.synthesize_phrases``)
  saying words from ``NON_DIGIT_WORDS``, alone or as random sentences.

The per-feature normalisation of the frontend removes the level, so a
-60 dBFS hiss reaches the network as loud as speech: the levels drawn here
matter for the composition only.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from recipes.digits.data import SAMPLE_RATE, Clip, augment_audio, coloured_noise

# Words that sound like a digit, or are one in another spelling, and so are left out of the
# non-digit speech: teaching "for" -> nothing would teach "four" -> nothing.  Words that merely
# start with such a sound ("forward", "today", "often") are kept on purpose: the model must
# learn that a digit is a whole word.  "ten", "eleven", "twelve", "hundred" are kept as well:
# they are not in the vocabulary.  The list is general English written without looking at the
# shared English clips' transcripts (the out-of-vocabulary test set); common words overlap.
SOUND_ALIKES = frozenset(
    "oh o owe zero hero one won wan two to too tu three free tree thee four for fore far "
    "five fife hive dive fine six sicks sex seeks sax seven heaven eight ate ache bait gate "
    "nine nein mine line wine pine".split()
)

NON_DIGIT_WORDS = tuple(
    """
    yes no stop go left right up down on off back forward next previous cancel open close start pause play
    hello goodbye please thanks sorry okay maybe never always today tomorrow morning evening night week year
    ten eleven twelve hundred thousand million first second third half quarter dozen number count digit
    and the a an of in at by with from about over under after before while because but or if then so
    he she it we they you my your his her our their this that these those here there where when why how what
    who which all some many much more most less few every each other another same different new old good bad
    big small long short high low hot cold fast slow early late hard soft light dark warm cool happy sad
    man woman child people friend mother father brother sister family house home room door window table chair
    water coffee tea milk bread apple orange banana lemon sugar salt butter cheese dinner lunch breakfast
    car bus train ship plane road street city country world river mountain island forest garden flower
    dog cat horse bird fish cow sheep mouse rabbit lion tiger bear
    red blue green yellow black white brown purple pink grey
    music song dance picture story book letter paper pencil phone computer camera radio television
    work read write speak listen walk run jump swim sleep eat drink think know feel want need like love
    come came going gone went make made take took give gave find found tell told ask asked call called
    remember forget understand believe answer question problem reason idea money time place thing way day
    weather rain snow wind cloud sun moon star summer winter spring autumn
    doctor teacher student police farmer driver captain king prince princess soldier nurse cook
    """.split()
)


def phrase_texts(rng: np.random.Generator, count: int) -> List[str]:
    """``count`` texts of 1-10 words from ``NON_DIGIT_WORDS`` (a third single words, the rest 2-10 word 'sentences')."""
    texts = []
    for _ in range(count):
        n = 1 if rng.random() < 1 / 3 else int(rng.integers(2, 11))
        texts.append(" ".join(NON_DIGIT_WORDS[i] for i in rng.integers(len(NON_DIGIT_WORDS), size=n)))
    return texts


NOISE_KINDS = ("silence", "noise", "hum", "clicks", "tone", "notes")


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return coloured_noise(rng, n, rng.uniform(0, 2))


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz (+-1 %) with up to 20 harmonics of random, falling amplitude."""
    t = np.arange(n) / SAMPLE_RATE
    fundamental = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
    harmonics = range(1, int(rng.integers(2, 21)))
    return sum(rng.uniform(0.1, 1.0) / k ** rng.uniform(0, 1.5) * np.sin(2 * np.pi * k * fundamental * t
                                                                           + rng.uniform(0, 2 * np.pi))
               for k in harmonics if k * fundamental < SAMPLE_RATE / 2)


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Clicks and pops: 1-20 decaying impulses of random sign and size, over a faint noise floor."""
    out = _noise(rng, n) * 10 ** (rng.uniform(-60, -30) / 20)
    for _ in range(int(rng.integers(1, 21))):
        start = int(rng.integers(n))
        length = min(int(rng.integers(8, 200)), n - start)
        decay = np.exp(-np.arange(length) / max(length / 4, 1))
        out[start:start + length] += rng.choice([-1, 1]) * rng.uniform(0.2, 1) * decay * rng.standard_normal(length)
    return out


def _tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """1-4 steady sinusoids between 50 Hz and 3.9 kHz (one is a pure tone)."""
    t = np.arange(n) / SAMPLE_RATE
    return sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * rng.uniform(50, 3900) * t + rng.uniform(0, 2 * np.pi))
               for _ in range(int(rng.integers(1, 5))))


def _notes(rng: np.random.Generator, n: int) -> np.ndarray:
    """A music-like line: notes of 80-600 ms on an equal-tempered scale, with harmonics and attack / decay."""
    out = np.zeros(n)
    position = 0
    while position < n:
        length = min(int(rng.uniform(0.08, 0.6) * SAMPLE_RATE), n - position)
        t = np.arange(length) / SAMPLE_RATE
        f0 = 110.0 * 2 ** (int(rng.integers(0, 48)) / 12)
        note = sum(rng.uniform(0, 1) / k * np.sin(2 * np.pi * k * f0 * t)
                   for k in range(1, int(rng.integers(1, 8))) if k * f0 < SAMPLE_RATE / 2)
        envelope = np.minimum(t / 0.01, 1) * np.exp(-t * rng.uniform(0, 8))
        out[position:position + length] = note * envelope
        position += length
    return out


_MAKERS = {"noise": _noise, "hum": _hum, "clicks": _clicks, "tone": _tone, "notes": _notes}


def noise_example(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    """``seconds`` of one non-speech ``kind``, a third of them mixed with a second kind, at -70..-3 dBFS peak."""
    n = max(int(seconds * SAMPLE_RATE), 1)
    if kind == "silence":
        return np.zeros(n, np.float32)  # digital silence, exactly: normalised features are all zero
    audio = _MAKERS[kind](rng, n).astype(np.float64)
    if rng.random() < 1 / 3:
        other = _MAKERS[str(rng.choice(sorted(_MAKERS)))](rng, n)
        audio = audio / (np.abs(audio).max() + 1e-12) + rng.uniform(0.05, 1) * other / (np.abs(other).max() + 1e-12)
    peak_db = rng.uniform(-70, -3)
    return (audio * 10 ** (peak_db / 20) / (np.abs(audio).max() + 1e-12)).astype(np.float32)


SPEECH_SHARE = 0.5  # of the no-digit examples, the share of non-digit speech (the rest: non-speech)


def no_digit_example(rng: np.random.Generator, phrases: Sequence[Clip]) -> Tuple[np.ndarray, List[int]]:
    """One example with an empty target: a non-digit phrase (padded 0-0.5 s, augmented) or 0.2-6 s of non-speech."""
    if phrases and rng.random() < SPEECH_SHARE:
        phrase = phrases[rng.integers(len(phrases))].samples
        pad = [np.zeros(int(rng.uniform(0, 0.5) * SAMPLE_RATE), np.float32) for _ in range(2)]
        return augment_audio(rng, np.concatenate([pad[0], phrase, pad[1]])), []
    kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
    return noise_example(rng, kind, rng.uniform(0.2, 6.0)), []
