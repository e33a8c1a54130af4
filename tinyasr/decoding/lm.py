"""Word n-gram language models: read an ARPA file (plain or gzip), score words, build a small one; KenLM
binary files through the optional ``kenlm`` package (:func:`load_language_model` tells them apart).

Scores are natural logs (ARPA stores log10; the reader converts once), so they add directly to CTC
log-probabilities in beam search (tinyasr.decoding.beam).  Back-off follows the ARPA rule:
``log P(w | h) = log p(h, w)`` when the n-gram is listed, else ``bow(h) + log P(w | h[1:])``.

:func:`build_arpa` counts a text file (one sentence a line) into an interpolated Witten-Bell model, which
ARPA expresses exactly (the back-off weight of a history is its share of unseen continuations): enough for
the small domain models (digit strings, commands, names) an on-device recogniser is given; for large
corpora use KenLM's ``lmplz`` and read its ARPA output here.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Sequence, Tuple

from tinyasr.errors import TinyASRError

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNKNOWN_LOG10 = -10.0  # a word the model does not list, when it has no <unk> entry (KenLM's choice for OOV is -100)
MAX_ORDER = 10


KENLM_MAGIC = b"mmap lm http://kheafield.com/code"  # how every KenLM binary file (build_binary's output) starts


class LanguageModelError(TinyASRError):
    """A language model cannot be read: the message names the file (and the line of an ARPA file)."""


Context = Tuple[str, ...]


class ARPALanguageModel:
    """An n-gram model read from an ARPA file (``.arpa`` or gzip-compressed ``.arpa.gz``).

    ``score(context, word) -> (log P(word | context), next context)``: natural log, ``context`` is the
    tuple of preceding words (start with :meth:`start`), cut to ``order - 1`` words.  A word the model
    does not list scores as ``<unk>`` when the model has one, else ``unknown_log10`` (in log10, as ARPA).
    """

    def __init__(self, path, unknown_log10: float = UNKNOWN_LOG10):
        self.path = os.fspath(path)
        self._entries: Dict[Context, Tuple[float, float]] = {}  # n-gram -> (ln p, ln back-off)
        self.order = self._read(self.path)
        self._unknown = (self._entries[(UNK,)][0] if (UNK,) in self._entries else unknown_log10 * LN10)
        self._cache: Dict[Tuple[Context, str], float] = {}

    def __contains__(self, word: str) -> bool:
        return (word,) in self._entries

    def start(self) -> Context:
        return (BOS,) if self.order > 1 else ()

    def score(self, context: Context, word: str) -> Tuple[float, Context]:
        key = (context, word)
        logp = self._cache.get(key)
        if logp is None:
            logp = self._cache[key] = self._log_prob(context, word)
        return logp, (context + (word,))[1 - self.order:] if self.order > 1 else ()

    def _log_prob(self, context: Context, word: str) -> float:
        if (word,) not in self._entries:
            return self._unknown
        backoff = 0.0
        for first in range(len(context) + 1):  # longest history first
            history = context[first:]
            entry = self._entries.get(history + (word,))
            if entry is not None:
                return backoff + entry[0]
            bow = self._entries.get(history)
            if bow is not None:
                backoff += bow[1]
        raise AssertionError("unreachable: the unigram is listed")

    # -- reading -------------------------------------------------------------

    def _read(self, path: str) -> int:
        try:
            with open(path, "rb") as raw:
                magic = raw.read(2)
            opened = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
            with opened as handle:
                return self._parse(io.TextIOWrapper(handle, encoding="utf-8"))
        except OSError as exc:  # missing file, bad gzip stream
            raise LanguageModelError(f"{path}: cannot read the language model: {exc}") from None
        except UnicodeDecodeError as exc:
            raise LanguageModelError(f"{path}: the language model is not UTF-8 text ({exc.reason})") from None

    def _parse(self, lines) -> int:
        counts: Dict[int, int] = {}
        section = None  # None before \data\, 0 in \data\, n in \n-grams:
        line_number = 0

        def fail(problem: str):
            raise LanguageModelError(f"{self.path}: line {line_number}: {problem}")

        for line_number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            if line == "\\data\\":
                section = 0
            elif line == "\\end\\":
                break
            elif line.startswith("\\") and line.endswith("-grams:"):
                try:
                    section = int(line[1:-len("-grams:")])
                except ValueError:
                    fail(f"bad section header {line[:40]!r}")
                if section not in counts:
                    fail(f"section {line} is not announced in \\data\\")
            elif section == 0:
                name, _, value = line.partition(" ")
                n, _, count = value.partition("=")
                numbers = n.strip().isdigit() and count.strip().isdigit()
                if name != "ngram" or not numbers or not 1 <= int(n) <= MAX_ORDER:
                    fail(f"expected 'ngram N=COUNT' with N from 1 to {MAX_ORDER}, got {line[:40]!r}")
                counts[int(n)] = int(count)
            elif section:
                fields = line.split()
                if len(fields) not in (section + 1, section + 2):
                    fail(f"a {section}-gram line needs a log10 probability, {section} words and an optional "
                         f"back-off weight, got {len(fields)} fields")
                try:
                    logp = float(fields[0])
                    bow = float(fields[section + 1]) if len(fields) == section + 2 else 0.0
                except ValueError:
                    fail(f"a probability or back-off weight is not a number: {line[:60]!r}")
                if not (math.isfinite(logp) and math.isfinite(bow)) or logp > 0:
                    fail(f"log10 probabilities must be finite and <= 0: {line[:60]!r}")
                self._entries[tuple(fields[1:section + 1])] = (logp * LN10, bow * LN10)
            else:
                fail(f"text before \\data\\: {line[:40]!r}")
        if not counts or 1 not in counts:
            raise LanguageModelError(f"{self.path}: not an ARPA file (no \\data\\ section with 'ngram 1=...')")
        listed = Counter(len(key) for key in self._entries)
        for n, count in sorted(counts.items()):
            if listed[n] != count:
                raise LanguageModelError(f"{self.path}: \\data\\ announces {count} {n}-grams but the file lists "
                                         f"{listed[n]}")
        return max(counts)


def load_language_model(path):
    """The model in ``path``: a KenLM binary file (by its header) through :class:`KenLMLanguageModel`, else an
    ARPA file (plain or gzip) read here.  Both score as :class:`ARPALanguageModel` does."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            head = raw.read(len(KENLM_MAGIC))
    except OSError as exc:
        raise LanguageModelError(f"{path}: cannot read the language model: {exc}") from None
    return KenLMLanguageModel(path) if head == KENLM_MAGIC else ARPALanguageModel(path)


class KenLMLanguageModel:
    """A KenLM model (a binary file from KenLM's ``build_binary``; KenLM reads ARPA too) through the ``kenlm``
    package, with ARPALanguageModel's calls: ``score(context, word) -> (natural-log P, next context)``, the
    contexts being KenLM states.  KenLM's own rules apply (an unlisted word scores as its ``<unk>``)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            import kenlm
        except ImportError:
            raise LanguageModelError(f"{self.path} is a KenLM binary file: reading it needs the optional 'kenlm' "
                                     "package (pip install kenlm), or give the ARPA file it was built from") from None
        try:
            self._model = kenlm.Model(self.path)
        except (OSError, RuntimeError, ValueError) as exc:
            raise LanguageModelError(f"{self.path}: kenlm cannot read the language model: {exc}") from None
        self._state = kenlm.State
        self.order = self._model.order
        self._cache: Dict[tuple, Tuple[float, object]] = {}

    def __contains__(self, word: str) -> bool:
        return word in self._model

    def start(self):
        state = self._state()
        self._model.BeginSentenceWrite(state)
        return state

    def score(self, context, word: str):
        key = (context, word)
        hit = self._cache.get(key)
        if hit is None:
            following = self._state()
            hit = self._cache[key] = (self._model.BaseScore(context, word, following) * LN10, following)
        return hit


# ---------------------------------------------------------------------------
# Building a small model


def _sentences(lines: Iterable[str]) -> List[List[str]]:
    return [[BOS, *line.split(), EOS] for line in lines if line.split()]


def witten_bell(lines: Iterable[str], order: int) -> Dict[Context, Tuple[float, float]]:
    """Interpolated Witten-Bell n-grams of whitespace-separated sentences: n-gram -> (log10 p, log10 bow).

    P(w | h) = (c(h w) + N(h) P(w | h')) / (c(h) + N(h)), with N(h) the number of distinct words seen after
    h; unigrams interpolate with a uniform distribution over the seen words, </s> and <unk>.  A seen
    history's back-off weight is N(h) / (c(h) + N(h)), which makes ARPA's back-off rule give the
    interpolated probability of every unseen continuation.
    """
    if not 1 <= order <= MAX_ORDER:
        raise TinyASRError(f"the n-gram order must be from 1 to {MAX_ORDER}, got {order}")
    sentences = _sentences(lines)
    if not sentences:
        raise TinyASRError("the text has no words to count")
    counts: Dict[Context, Counter] = defaultdict(Counter)  # history -> next-word counts
    for words in sentences:
        for i in range(1, len(words)):
            for n in range(1, order + 1):
                if i - n + 1 >= 0:
                    counts[tuple(words[i - n + 1:i])][words[i]] += 1

    unigrams = counts[()]
    types = len(unigrams) + 1  # + <unk>
    total, distinct = sum(unigrams.values()), len(unigrams)
    prob: Dict[Context, float] = {(w,): (c + distinct / types) / (total + distinct) for w, c in unigrams.items()}
    prob[(UNK,)] = distinct / types / (total + distinct)

    def p(history: Context, word: str) -> float:
        if not history:
            return prob.get((word,), prob[(UNK,)])
        seen = counts.get(history)
        lower = p(history[1:], word)
        if not seen:
            return lower
        c, n = sum(seen.values()), len(seen)
        return (seen[word] + n * lower) / (c + n)

    model: Dict[Context, Tuple[float, float]] = {}
    for history, following in counts.items():
        for word in following:
            model[history + (word,)] = (math.log10(p(history, word)), 0.0)
    model[(UNK,)] = (math.log10(prob[(UNK,)]), 0.0)
    model[(BOS,)] = (-99.0, 0.0)  # never predicted; listed for its back-off weight
    for history, following in counts.items():
        if history and len(history) < order and history in model:
            c, n = sum(following.values()), len(following)
            model[history] = (model[history][0], math.log10(n / (c + n)))
    return model


def write_arpa(model: Dict[Context, Tuple[float, float]], path) -> None:
    """Write n-gram -> (log10 p, log10 bow) as an ARPA file (gzip when the name ends in .gz)."""
    by_order: Dict[int, List[Tuple[Context, Tuple[float, float]]]] = defaultdict(list)
    for ngram, values in model.items():
        by_order[len(ngram)].append((ngram, values))
    top = max(by_order)
    lines = ["\\data\\", *(f"ngram {n}={len(by_order[n])}" for n in sorted(by_order)), ""]
    for n in sorted(by_order):
        lines.append(f"\\{n}-grams:")
        for ngram, (logp, bow) in sorted(by_order[n]):
            lines.append(f"{logp:.6f}\t{' '.join(ngram)}" + (f"\t{bow:.6f}" if n < top else ""))
        lines.append("")
    text = "\n".join(lines + ["\\end\\", ""])
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


def build_arpa(text_path, arpa_path, order: int = 3) -> int:
    """Count a text file (one sentence a line) into an ARPA model at ``arpa_path``; returns the n-grams written."""
    try:
        with open(text_path, encoding="utf-8") as handle:
            model = witten_bell(handle, order)
    except (OSError, UnicodeDecodeError) as exc:
        raise TinyASRError(f"{text_path}: cannot read the text: {exc}") from None
    write_arpa(model, arpa_path)
    return len(model)


def sentence_log_prob(model, words: Sequence[str]) -> float:
    """Natural-log probability of a whole sentence, </s> included (what beam search adds up word by word)."""
    context, total = model.start(), 0.0
    for word in [*words, EOS]:
        logp, context = model.score(context, word)
        total += logp
    return total
