"""The bundled sample: a digit string spoken by the held-out speaker, as a 16 kHz WAV.

    python -m recipes.digits.sample --dest tinyasr/models

Composed (no augmentation, fixed seed) from recordings of the speaker the model
never trained on, and written at 16 kHz so the README's first command also
exercises the runtime's resampler.  Writes ``sample_digits.wav`` (mono,
16-bit PCM) and ``sample_digits.txt`` (the transcript, digit words).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from recipes.digits import data

SAMPLE_SEED = 4127
SAMPLE_DIGITS = 6
SAMPLE_RATE_OUT = 16000  # Hz


def make_sample(fsdd_dir: str, dest: str) -> str:
    """Write the sample WAV and transcript into ``dest``; returns the transcript."""
    takes = data.by_digit(data.split(data.load_fsdd(fsdd_dir))["unseen"])
    audio, digits = data.compose(np.random.default_rng(SAMPLE_SEED), takes, SAMPLE_DIGITS, augment=False)
    upsampled = resample_poly(audio, SAMPLE_RATE_OUT // data.SAMPLE_RATE, 1)
    os.makedirs(dest, exist_ok=True)
    sf.write(os.path.join(dest, "sample_digits.wav"), np.clip(upsampled, -1, 1), SAMPLE_RATE_OUT, subtype="PCM_16")
    transcript = data.words(digits)
    with open(os.path.join(dest, "sample_digits.txt"), "w") as f:
        f.write(transcript + "\n")
    return transcript


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", default=data.default_fsdd_dir(), help="FSDD folder holding recordings/")
    parser.add_argument("--dest", default="tinyasr/models")
    args = parser.parse_args(argv)
    print(make_sample(args.fsdd, args.dest))


if __name__ == "__main__":
    main()
