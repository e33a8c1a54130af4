"""Beam search on the bundled digits model: WER against greedy, a boosted digit's recall, and the cost.

1. WER.  The held-out digit strings of recipes/digits/evaluate.py (300 strings from the unseen speaker,
   300 from the training speakers' held-back takes, 3-7 digits) go through the network once each; the same
   outputs are then decoded greedily and by beam search (beam 8) with a digit-string LM: a Witten-Bell
   model (tinyasr.decoding.lm.build_arpa) counted from 20,000 random strings of 3-7 digits drawn with
   another seed, which is what the task's strings are.  WER by recipes.digits.evaluate.word_error_rate.
2. Hotwords.  On the unseen speaker's strings, the digit greedy decoding finds least often (recall: matched
   occurrences over occurrences in the references) is boosted; its recall and false insertions (hypothesis
   occurrences beyond the reference's, per string) for several boosts.
3. Cost.  Seconds of beam search per second of audio for beam 4 / 8 / 16 with and without the LM, against
   the network's own time per second of audio in the same process; and on synthetic peaky outputs of a
   29-class character model at 50 frames/s (one minute) for a larger vocabulary.

Run: ``python3 benchmarks/bench_beam.py`` from the repository root; writes benchmarks/results/beam.md.
The machine's 2 cores were shared with other work when the committed figures were taken.
"""

from __future__ import annotations

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
from tinyasr.decoding.beam import ctc_beam_search  # noqa: E402
from tinyasr.decoding.lm import build_arpa  # noqa: E402
from tinyasr.decoding.specs import CTCSpec  # noqa: E402
from tinyasr.pipeline.vad import speech_in  # noqa: E402

LM_SEED, LM_STRINGS = 777, 20_000
RESULTS = os.path.join(ROOT, "benchmarks", "results", "beam.md")


def digit_lm(folder: str, order: int) -> str:
    rng = np.random.default_rng(LM_SEED)
    text = os.path.join(folder, "digit_strings.txt")
    with open(text, "w") as handle:
        for _ in range(LM_STRINGS):
            digits = rng.integers(0, 10, size=rng.integers(EVAL_DIGITS[0], EVAL_DIGITS[1] + 1))
            handle.write(" ".join(data.DIGIT_WORDS[d] for d in digits) + "\n")
    arpa = os.path.join(folder, f"digits{order}.arpa")
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
    lines = ["# Beam search on the digits model", "", f"CPU: {cpu_model()} (2 cores, shared with other work).", ""]
    with tempfile.TemporaryDirectory() as folder:
        lms = {order: digit_lm(folder, order) for order in (3, 8)}
        outputs = {name: Outputs(recognizer, clips) for name, clips in sets.items()}
        configs = {
            "greedy": None,
            "beam 8, no LM": BeamSearch(beam=8),
            "beam 8, 3-gram LM, alpha 0.5 beta 1.0 (defaults)": BeamSearch(beam=8, lm=lms[3]),
            "beam 8, 8-gram LM, alpha 0.5 beta 1.0": BeamSearch(beam=8, lm=lms[8]),
            "beam 8, 8-gram LM, alpha 1.0 beta 2.0": BeamSearch(beam=8, lm=lms[8], alpha=1.0, beta=2.0),
        }
        lines += ["## WER on the held-out digit strings", "",
                  "| decoding | unseen speaker WER | held-back takes WER | strings changed vs greedy |",
                  "|---|---|---|---|"]
        greedy = {name: out.texts(None)[0] for name, out in outputs.items()}
        for label, decoding in configs.items():
            cells, changed = [], 0
            for name, out in outputs.items():
                texts = out.texts(decoding)[0]
                cells.append(f"{100 * word_error_rate(digit_words(sets[name]), texts):.2f} %")
                changed += sum(a != b for a, b in zip(texts, greedy[name]))
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {changed} |")
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
                (f"beam {b}{lm_label}", BeamSearch(beam=b, lm=lm)) for b in (4, 8, 16)
                for lm_label, lm in (("", None), (", 3-gram LM", lms[3]))]:
            seconds = min(out.texts(decoding)[1] for _ in range(3))
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
