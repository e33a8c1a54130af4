"""Batch transcription: many files into one JSON Lines file, resumable, on this machine or a Dask cluster.

    tinyasr.batch.run(["calls/", "manifest.jsonl"], "results.jsonl", model="digits")
    tinyasr.batch.run(inputs, "results.jsonl", client=dask.distributed.Client("tcp://scheduler:8786"))

Inputs are audio files, folders (searched recursively) and manifests (JSON Lines with ``audio_filepath``
and optionally a reference text, as NeMo's are; relative paths count from the manifest's folder).  Each
input gets one row in the output as it finishes: the result, or ``{"audio_filepath", "error"}``, so one
bad file never stops the run.  A rerun skips the files that already have a row (``retry_errors``: except
rows with an error), so a killed run resumes where it stopped.

With a Dask ``client`` the files go to the cluster's workers in chunks; each worker process loads the
memory-mapped model once and keeps it (:func:`_recognizer`), and a worker that dies has its chunks redone
elsewhere by Dask.  The same code runs on a LocalCluster and on a multi-machine cluster, whose workers
must see the audio and the model at the same paths.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tinyasr.decoding.specs import BeamSearch
from tinyasr.errors import TinyASRError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")
MANIFEST_EXTENSIONS = (".json", ".jsonl")


@dataclass(frozen=True)
class Item:
    """One audio file to transcribe and, from a manifest, its reference text."""

    audio_filepath: str
    reference: Optional[str] = None


# ---------------------------------------------------------------------------
# What to transcribe


def _manifest_items(path: str, reference_key: str) -> List[Item]:
    folder = os.path.dirname(os.path.abspath(path))
    items = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TinyASRError(f"{path}: cannot read the manifest: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TinyASRError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        audio = entry.get("audio_filepath") if isinstance(entry, dict) else None
        if not isinstance(audio, str) or not audio:
            raise TinyASRError(f"{path}: line {number}: needs an 'audio_filepath' string")
        reference = entry.get(reference_key)
        if reference is not None and not isinstance(reference, str):
            raise TinyASRError(f"{path}: line {number}: {reference_key!r} must be a string")
        items.append(Item(audio if os.path.isabs(audio) else os.path.join(folder, audio), reference))
    return items


def collect(inputs: Iterable, reference_key: str = "text") -> List[Item]:
    """The files to transcribe, in order, each once: audio files, folders' audio files, manifests' entries."""
    items: List[Item] = []
    for given in inputs:
        path = os.fspath(given)
        if os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                           if name.lower().endswith(AUDIO_EXTENSIONS))
            items += [Item(p) for p in found]
        elif path.lower().endswith(MANIFEST_EXTENSIONS):
            items += _manifest_items(path, reference_key)
        else:
            items.append(Item(path))  # a missing or unreadable file gets its error row
    unique: Dict[str, Item] = {}
    for item in items:
        unique.setdefault(item.audio_filepath, item)
    return list(unique.values())


# ---------------------------------------------------------------------------
# The output file


def read_rows(output) -> List[dict]:
    """The rows of an output file (an unfinished last line, from a killed run, is left out)."""
    if not os.path.exists(output):
        return []
    rows = []
    with open(output, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows


def _open_for_append(output):
    """The output file for appending, cut back to its last complete line."""
    if os.path.exists(output):
        with open(output, "rb+") as handle:
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                handle.truncate(keep)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    return open(output, "a", encoding="utf-8")


# ---------------------------------------------------------------------------
# Transcribing (in this process or on a worker)

_RECOGNIZERS: Dict[Tuple[str, Optional[BeamSearch]], object] = {}  # per process: each worker loads a model once


def _recognizer(model: str, decoding: Optional[BeamSearch]):
    from tinyasr.pipeline.recognizer import Recognizer

    key = (model, decoding)
    if key not in _RECOGNIZERS:
        _RECOGNIZERS[key] = Recognizer(model, decoding=decoding)
    return _RECOGNIZERS[key]


def transcribe_item(recognizer, item: Item) -> dict:
    """The output row of one file: the result without tokens (words carry the times), or the error."""
    row: Dict[str, object] = {"audio_filepath": item.audio_filepath}
    try:
        result = recognizer.transcribe(item.audio_filepath).to_dict()
    except TinyASRError as exc:
        row["error"] = str(exc)
    else:
        result.pop("tokens")
        row.update(result)
    if item.reference is not None:
        row["reference"] = item.reference
    return row


def transcribe_chunk(model: str, decoding: Optional[BeamSearch], items: Sequence[Item]) -> List[dict]:
    """A worker's task: rows for a few files with this process's Recognizer (a model failure: error rows)."""
    try:
        recognizer = _recognizer(model, decoding)
    except TinyASRError as exc:
        return [{"audio_filepath": item.audio_filepath, "error": str(exc)} for item in items]
    return [transcribe_item(recognizer, item) for item in items]


# ---------------------------------------------------------------------------
# A run


@dataclass(frozen=True)
class Summary:
    """What a run did: files transcribed now, skipped as done before, failed now; error rates over every
    row of the output that has a reference (None when none has)."""

    transcribed: int
    skipped: int
    failed: int
    wer: Optional[float] = None
    cer: Optional[float] = None
    references: int = 0

    def to_dict(self) -> dict:
        return dict(vars(self))


def run(inputs: Iterable, output, *, model=None, decoding: Optional[BeamSearch] = None, client=None,
        chunk_size: int = 8, reference_key: str = "text", retry_errors: bool = False,
        progress: Optional[Callable[[int], None]] = None) -> Summary:
    """Transcribe ``inputs`` into the JSON Lines file ``output`` (see the module docstring).

    ``model``: a path or model name (default: the bundled one); ``client``: a dask.distributed Client, or
    None to work in this process; ``chunk_size``: files per Dask task; ``progress``: called with the number
    of files each time rows are written.
    """
    from tinyasr.model_cache import resolve_model_path

    if chunk_size < 1:
        raise TinyASRError(f"chunk_size must be at least 1, got {chunk_size}")
    model_path = os.path.abspath(resolve_model_path(model))
    items = collect(inputs, reference_key)
    done = {row["audio_filepath"] for row in read_rows(output) if not (retry_errors and "error" in row)}
    todo = [item for item in items if item.audio_filepath not in done]
    transcribed = failed = 0
    with _open_for_append(output) as handle:
        for rows in _results(todo, model_path, decoding, client, chunk_size):
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                failed += "error" in row
                transcribed += "error" not in row
            handle.flush()
            if progress is not None:
                progress(len(rows))
    return Summary(transcribed, len(items) - len(todo), failed, **error_rates(read_rows(output)))


def _results(todo: List[Item], model: str, decoding, client, chunk_size: int):
    """Rows as they are ready: chunk by chunk on a Dask cluster, else file by file here."""
    if client is None:
        recognizer = _recognizer(model, decoding)
        for item in todo:
            yield [transcribe_item(recognizer, item)]
        return
    from dask.distributed import as_completed

    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    futures = client.map(transcribe_chunk, [model] * len(chunks), [decoding] * len(chunks), chunks, pure=False)
    chunk_of = {future.key: chunk for future, chunk in zip(futures, chunks)}
    for future, rows in as_completed(futures, with_results=True, raise_errors=False):
        if isinstance(rows, BaseException):  # e.g. KilledWorker: the chunk killed workers again and again
            rows = [{"audio_filepath": item.audio_filepath, "error": f"{type(rows).__name__}: {rows}"}
                    for item in chunk_of[future.key]]
        future.release()
        yield rows


# ---------------------------------------------------------------------------
# Error rates


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def normalise(text: str) -> str:
    """What both sides are compared as: case-folded, single spaces."""
    return " ".join(text.casefold().split())


def error_rates(rows: Iterable[dict]) -> dict:
    """Corpus WER and CER (total edits over total reference words / characters) of the rows with a reference;
    a file's last row counts, a failed file counts as an empty transcript."""
    last = {row["audio_filepath"]: row for row in rows if "reference" in row}
    if not last:
        return {}
    words = chars = word_edits = char_edits = 0
    for row in last.values():
        reference, hypothesis = normalise(row["reference"]), normalise(row.get("text", ""))
        word_edits += edit_distance(reference.split(), hypothesis.split())
        char_edits += edit_distance(reference, hypothesis)
        words, chars = words + len(reference.split()), chars + len(reference)
    return {"wer": word_edits / max(words, 1), "cer": char_edits / max(chars, 1), "references": len(last)}
