"""Batch transcription: every audio file under the given paths, one JSON line each, with a summary.

One Recognizer is loaded once and reused; a file that fails is reported and the batch goes on.

    python demos/batch.py PATH... [-m MODEL] [-o results.jsonl]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import tinyasr
from tinyasr.errors import TinyASRError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


def audio_files(paths):
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="audio files or folders")
    parser.add_argument("-m", "--model", help="a .tasr file or model name (default: the bundled digits model)")
    parser.add_argument("-o", "--output", help="write the JSON lines here (default: standard output)")
    args = parser.parse_args()
    recognizer = tinyasr.Recognizer(args.model)
    out = open(args.output, "w") if args.output else sys.stdout
    done = failed = 0
    audio_seconds, started = 0.0, time.perf_counter()
    for path in audio_files(args.paths):
        try:
            result = recognizer.transcribe(path)
        except TinyASRError as exc:
            failed += 1
            message = str(exc)  # names the file already, or gets its name
            print(message if str(path) in message else f"{path}: {message}", file=sys.stderr)
            continue
        done += 1
        audio_seconds += result.duration
        words = [{"text": w.text, "start": round(w.start, 2), "end": round(w.end, 2)} for w in result.words]
        print(json.dumps({"path": str(path), "text": result.text, "duration": result.duration, "words": words}),
              file=out, flush=True)
    seconds = time.perf_counter() - started
    print(f"{done} files ({audio_seconds:.1f} s of audio) in {seconds:.2f} s, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
