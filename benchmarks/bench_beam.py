"""Beam search on the bundled digits model: WER against greedy, a boosted digit's recall, and the cost.

1. WER.  The held-out digit strings of recipes/digits/evaluate.py (300 strings from the unseen speaker,
   300 from the training speakers' held-back takes, 3-7 digits) go through the network once each; the same
   outputs are then decoded greedily and by beam search (beam 4 / 8 / 16) with a digit-string LM: a 3-gram
   Witten-Bell model (tinyasr.decoding.lm.build_arpa) counted from LM_STRINGS random strings of 3-7 digits
   drawn with another seed, which is what the task's strings are.  Such an LM knows nothing of which digit
   was said, so its scores between digits should tie: counted from 20,000 strings they differ by sampling
   noise (about 10 % a trigram) that tipped near-ties of the network (0.1 nats) to wrong digits; from
   200,000 they tie closely.  alpha and beta are tuned on the held-back takes of the training speakers
   (beam 8; ties go to the smaller LM weight) and the unseen speaker is scored with them, never tuned on.
   WER by recipes.digits.evaluate.word_error_rate, and the strings beam search makes better or worse
   than greedy decoding.
2. Hotwords.  On the unseen speaker's strings, the digit greedy decoding finds least often (recall: matched
   occurrences over occurrences in the references) is boosted; its recall and false insertions (hypothesis
   occurrences beyond the reference's, per string) for several boosts.
3. Cost.  Seconds of beam search per second of audio for beam 4 / 8 / 16 with and without the LM, against
   the network's own time per second of audio in the same process; and on synthetic peaky outputs of a
   29-class character model at 50 frames/s (one minute) for a larger vocabulary.

Run: ``python3 benchmarks/bench_beam.py`` from the repository root; writes benchmarks/results/beam.md.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import cpu_model  # noqa: E402
from recipes.digits import data  # noqa: E402
from recipes.digits.evaluate import EVAL_DIGITS, eval_sets, word_error_rate  # noqa: E402
from tinyasr import BeamSearch, Recognizer  # noqa: E402
from tinyasr.batch import edit_distance  # noqa: E402
from tinyasr.decoding.beam import ctc_beam_search  # noqa: E402
from tinyasr.decoding.lm import build_arpa  # noqa: E402
from tinyasr.decoding.specs import CTCSpec  # noqa: E402
from tinyasr.pipeline.vad import speech_in  # noqa: E402

LM_SEED, LM_STRINGS, FEW_LM_STRINGS = 777, 200_000, 20_000
TUNING = "seen_heldback"  # the set alpha and beta are chosen on
ALPHAS, BETA_PER_ALPHA = (0.1, 0.25, 0.5, 1.0), (2.0, 2.3, 2.6)  # an LM word costs about alpha ln 10: beta near it
RESULTS = os.path.join(ROOT, "benchmarks", "results", "beam.md")


def digit_lm(folder: str, order: int, strings: int = LM_STRINGS) -> str:
    rng = np.random.default_rng(LM_SEED)
    text = os.path.join(folder, f"digit_strings{strings}.txt")
    with open(text, "w") as handle:
        for _ in range(strings):
            digits = rng.integers(0, 10, size=rng.integers(EVAL_DIGITS[0], EVAL_DIGITS[1] + 1))
            handle.write(" ".join(data.DIGIT_WORDS[d] for d in digits) + "\n")
    arpa = os.path.join(folder, f"digits{order}_{strings}.arpa")
    build_arpa(text, arpa, order=order)
    return arpa


class Outputs:
    """The network's outputs for each clip, kept to decode them several ways (Recognizer.transcribe's path)."""

    def __init__(self, recognizer: Recognizer, clips):
        self.recognizer, self.runs, self.audio_seconds = recognizer, [], 0.0
        for audio, _ in clips:
            forward = recognizer._forward(audio, data.SAMPLE_RATE)
            scores = recognizer._output(forward, recognizer.decoder)
            self.audio_seconds += forward.duration
            frame_seconds, valid = recognizer._time_base(forward, scores.shape[-2])
            self.runs.append((scores, dict(frame_seconds=frame_seconds, valid_frames=valid, duration=forward.duration,
                                           speech=speech_in(forward.samples, recognizer.sample_rate))))

    def texts(self, decoding):
        start = time.perf_counter()
        texts = [self.recognizer._decode_ctc(decoding, scores, **times).text.split() for scores, times in self.runs]
        return texts, time.perf_counter() - start


def digit_words(clips):
    return [[data.DIGIT_WORDS[d] for d in digits] for _, digits in clips]


def recall_and_insertions(refs, hyps, word):
    said = sum(r.count(word) for r in refs)
    found = sum(min(r.count(word), h.count(word)) for r, h in zip(refs, hyps))
    inserted = sum(max(0, h.count(word) - r.count(word)) for r, h in zip(refs, hyps))
    return found / max(said, 1), inserted / len(refs)


def main() -> None:
    recognizer = Recognizer()
    sets = eval_sets(data.load_fsdd(data.default_fsdd_dir()))
    lines = [f"# Beam search on the digits model ({time.strftime('%Y-%m-%d')})", "",
             f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when written.", ""]
    with tempfile.TemporaryDirectory() as folder:
        lm = digit_lm(folder, 3)
        outputs = {name: Outputs(recognizer, clips) for name, clips in sets.items()}
        greedy = {name: out.texts(None)[0] for name, out in outputs.items()}

        def wer(name, decoding):
            """WER of one set, and its strings better and worse than greedy decoding's."""
            refs, texts = digit_words(sets[name]), outputs[name].texts(decoding)[0]
            ours = [edit_distance(r, h) for r, h in zip(refs, texts)]
            theirs = [edit_distance(r, h) for r, h in zip(refs, greedy[name])]
            return (word_error_rate(refs, texts), sum(a < b for a, b in zip(ours, theirs)),
                    sum(a > b for a, b in zip(ours, theirs)))

        grid = [(alpha, round(alpha * ratio, 3)) for alpha in ALPHAS for ratio in BETA_PER_ALPHA]
        tuned = {weights: wer(TUNING, BeamSearch(beam=8, lm=lm, alpha=weights[0], beta=weights[1]))[0]
                 for weights in grid}
        alpha, beta = min(grid, key=lambda w: (tuned[w], w[0], abs(w[1] - w[0] * math.log(10))))
        lines += [f"## WER on the held-out digit strings (3-gram LM from {LM_STRINGS:,} strings; alpha {alpha}, "
                  f"beta {beta} tuned on the held-back takes)", "",
                  "Tuning (beam 8, WER on the held-back takes): " + ", ".join(
                      f"{a}/{b}: {100 * tuned[(a, b)]:.2f} %" for a, b in grid) + ".", "",
                  "| decoding | unseen speaker WER | better / worse strings | held-back takes WER | "
                  "better / worse strings |", "|---|---|---|---|---|"]
        configs = [("greedy", None)]
        configs += [(f"beam {b}, no LM", BeamSearch(beam=b)) for b in (4, 8, 16)]
        configs += [(f"beam {b}, 3-gram LM, alpha {alpha} beta {beta}", BeamSearch(beam=b, lm=lm, alpha=alpha, beta=beta))
                    for b in (4, 8, 16)]
        configs += [("beam 8, 3-gram LM, alpha 0.5 beta 1.0 (defaults)", BeamSearch(beam=8, lm=lm)),
                    (f"beam 8, 3-gram LM from {FEW_LM_STRINGS:,} strings, defaults",
                     BeamSearch(beam=8, lm=digit_lm(folder, 3, FEW_LM_STRINGS)))]
        for label, decoding in configs:
            cells = []
            for name in outputs:
                rate, better, worse = wer(name, decoding)
                cells += [f"{100 * rate:.2f} %", f"{better} / {worse}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)

        refs = digit_words(sets["unseen"])
        recalls = {w: recall_and_insertions(refs, greedy["unseen"], w)[0] for w in data.DIGIT_WORDS}
        word = min(recalls, key=recalls.get)
        lines += ["", f"## Hotword: boosting {word!r} (greedy's least-recalled digit, unseen speaker)", "",
                  "| decoding | recall | false insertions per string | WER |", "|---|---|---|---|"]
        boosted = [(f"beam 8, hotword {word}:{b}", BeamSearch(beam=8, hotwords=[(word, b)])) for b in (1.0, 2.0, 4.0, 8.0)]
        for label, decoding in [("greedy", None)] + boosted:
            texts = outputs["unseen"].texts(decoding)[0]
            recall, inserted = recall_and_insertions(refs, texts, word)
            lines.append(f"| {label} | {recall:.3f} | {inserted:.3f} | {100 * word_error_rate(refs, texts):.2f} % |")
            print(lines[-1], flush=True)

        out = outputs["unseen"]
        network = []
        for _ in range(2):  # the first pass above also compiled kernels: time the network again
            start = time.perf_counter()
            for audio, _ in sets["unseen"]:
                recognizer._output(recognizer._forward(audio, data.SAMPLE_RATE), recognizer.decoder)
            network.append(time.perf_counter() - start)
        per_second = min(network) / out.audio_seconds
        lines += ["", "## Cost per second of audio (unseen speaker's 300 strings, "
                  f"{out.audio_seconds:.0f} s of audio)", "",
                  f"Network (features + graph): {1000 * per_second:.2f} ms per second of audio.", "",
                  "| decoding | ms per s of audio | x network |", "|---|---|---|"]
        for label, decoding in [("greedy", None)] + [
                (f"beam {b}{lm_label}", BeamSearch(beam=b, lm=path, alpha=alpha, beta=beta)) for b in (4, 8, 16)
                for lm_label, path in (("", None), (", 3-gram LM", lm))]:
            seconds = min(out.texts(decoding)[1] for _ in range(2))
            cost = seconds / out.audio_seconds
            lines.append(f"| {label} | {1000 * cost:.2f} | {cost / per_second:.2f} |")
            print(lines[-1], flush=True)

    # a character model's output: 29 classes, 50 frames a second, peaky, one minute
    rng = np.random.default_rng(0)
    chars = tuple(" abcdefghijklmnopqrstuvwxyz'")
    frames = 50 * 60
    logits = rng.normal(size=(frames, len(chars) + 1)) * 2
    logits[np.arange(frames), rng.integers(0, len(chars) + 1, size=frames)] += 8
    spec = CTCSpec(output="o", blank=len(chars), vocabulary=chars, logits="logits")
    lines += ["", "## Cost on synthetic character-model output (29 classes, 50 frames/s, 60 s)", "",
              "| beam | ms per s of audio |", "|---|---|"]
    for beam in (4, 8, 16):
        start = time.perf_counter()
        ctc_beam_search(logits, spec, BeamSearch(beam=beam), frame_seconds=0.02)
        lines.append(f"| {beam} | {1000 * (time.perf_counter() - start) / 60:.2f} |")
        print(lines[-1], flush=True)

    with open(RESULTS, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
