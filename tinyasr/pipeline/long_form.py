"""Long recordings: read a file block by block (or an array piece by piece), cut it into utterances by voice
activity, transcribe each.

Memory stays bounded whatever the file's length: one block, the detector's window and at most one
segment (``VADConfig.max_segment`` seconds) of audio.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from tinyasr.audio.io import as_float32_mono, read_blocks
from tinyasr.audio.resample import StreamResampler
from tinyasr.decoding.results import Result, Token, Word
from tinyasr.errors import AudioError
from tinyasr.pipeline.vad import (
    FRAME_SECONDS,
    Segmenter,
    Utterance,
    VADConfig,
    make_vad,
)


def _read_blocks(source, block_seconds: float, sample_rate: Optional[int]) -> Iterator[Tuple[np.ndarray, int]]:
    """Mono float32 blocks of a file, never the whole file at once (tinyasr.audio.io.read_blocks checks the
    header and turns libsndfile's failures into AudioError); of an array at ``sample_rate``, pieces of it."""
    if isinstance(source, np.ndarray):
        samples = as_float32_mono(source, sample_rate)  # checks the rate and layout; no copy of float32 mono
        step = max(1, int(block_seconds * sample_rate))
        for start in range(0, samples.size, step):
            yield samples[start:start + step], sample_rate
        return
    for block, rate in read_blocks(source, block_seconds):
        yield as_float32_mono(block, rate), rate


def join_utterances(utterances: Iterable[Utterance], duration: float) -> Result:
    """One Result of a whole recording from its utterances: their words in order, times from the file start;
    its confidence is the least confident utterance's, out of vocabulary when any utterance is.

    Utterances that overlap (speech cut at ``VADConfig.max_segment``, the next one starting ``cut_overlap``
    earlier) heard the overlap twice: the words centred before its middle come from the first, the others from
    the second, and each side's tokens follow its words."""
    tokens: List[Token] = []
    words: List[Word] = []
    confidence, out_of_vocabulary = 1.0, False
    previous_end = None
    for utterance in utterances:
        placed = utterance.result.shifted(utterance.start, duration)
        new_tokens, new_words = list(placed.tokens), list(placed.words)
        if previous_end is not None and utterance.start < previous_end:
            middle = (utterance.start + previous_end) / 2
            tokens, words = _kept_before(tokens, words, middle)
            new_tokens, new_words = _kept_from(new_tokens, new_words, middle)
        tokens += new_tokens
        words += new_words
        previous_end = utterance.end
        confidence = min(confidence, utterance.result.confidence)
        out_of_vocabulary = out_of_vocabulary or utterance.result.out_of_vocabulary
    return Result(" ".join(w.text for w in words), tuple(tokens), tuple(words), duration, confidence,
                  out_of_vocabulary)


def _centre(item) -> float:
    return (item.start + item.end) / 2


def _kept_before(tokens: List[Token], words: List[Word], middle: float):
    """The words centred before ``middle``, and the tokens before the first word dropped (else the middle)."""
    kept = [w for w in words if _centre(w) < middle]
    cut = max([middle] + [w.end for w in kept[-1:]]) if len(kept) == len(words) else words[len(kept)].start
    return [t for t in tokens if _centre(t) < cut], kept


def _kept_from(tokens: List[Token], words: List[Word], middle: float):
    """The words centred from ``middle`` on, and the tokens after the last word dropped (else the middle)."""
    kept = [w for w in words if _centre(w) >= middle]
    dropped = len(words) - len(kept)
    cut = words[dropped - 1].end if dropped else min([middle] + [w.start for w in kept[:1]])
    return [t for t in tokens if _centre(t) >= cut], kept


def transcribe_utterances(path, recognizer, *, vad=None, config: VADConfig = VADConfig(),
                          block_seconds: float = 5.0, sample_rate: Optional[int] = None) -> Iterator[Utterance]:
    """Yield an Utterance for each voiced segment of an audio file (or of an array of samples at
    ``sample_rate``), in order.

    ``recognizer``: anything with ``sample_rate`` and ``transcribe(samples, sample_rate=...)``, a Recognizer
    (tinyasr.transcribe_long picks the bundled one by default); ``vad``: a detector, a frame-VAD .tasr
    path / Model (MarbleNetVAD) or None (EnergyVAD).  Memory: one block, the detector's window and at most
    one segment (``config.max_segment`` s) of audio, whatever the file's length.
    """
    rate = recognizer.sample_rate
    detector = make_vad(vad, rate)
    segmenter = Segmenter(config)
    to_model = to_vad = None
    kept = np.zeros(0, np.float32)  # audio at the recognizer's rate from sample kept_start on
    kept_start = 0
    total = 0

    def emit(segments):
        nonlocal kept, kept_start
        for start, end in segments:
            first, stop = int(round(start * rate)), min(int(round(end * rate)), total)
            samples = kept[max(0, first - kept_start):stop - kept_start]
            if samples.size:
                yield Utterance(first / rate, stop / rate, recognizer.transcribe(samples, sample_rate=rate))
        # keep what a future segment may still need: from the open one's padded start, else from
        # speech_pad before the first frame the detector has not judged yet
        since = segmenter.open_since
        if since is None:
            since = segmenter.frames_seen * FRAME_SECONDS - config.speech_pad
        drop = max(0, min(int(since * rate), total) - kept_start)
        kept, kept_start = kept[drop:], kept_start + drop

    for block, file_rate in _read_blocks(path, block_seconds, sample_rate):
        if to_model is None:
            to_model = StreamResampler(file_rate, rate)
            to_vad = StreamResampler(file_rate, detector.sample_rate)
        piece = to_model.accept(block)
        kept = np.concatenate([kept, piece])
        total += piece.size
        yield from emit(segmenter.accept(detector.accept(to_vad.accept(block))))
    if to_model is None:
        raise AudioError(f"{path}: the file contains no samples")
    piece = to_model.finish()
    kept = np.concatenate([kept, piece])
    total += piece.size
    probs = np.concatenate([detector.accept(to_vad.finish()), detector.finish()])
    yield from emit(segmenter.accept(probs) + segmenter.finish())
