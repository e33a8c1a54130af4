"""ARPA reading against a hand-computed model (back-off included) and the Witten-Bell builder against its
defining property: every history's distribution over the vocabulary sums to one."""

import gzip
import itertools
import math
import subprocess
import sys

import pytest

from tinyasr.decoding.lm import (
    BOS,
    EOS,
    UNK,
    ARPALanguageModel,
    LanguageModelError,
    build_arpa,
    sentence_log_prob,
)
from tinyasr.errors import TinyASRError

HAND = """\
\\data\\
ngram 1=4
ngram 2=4
ngram 3=1

\\1-grams:
-1.0\t<s>\t-0.5
-0.5\ta\t-0.3
-0.7\tb\t-0.2
-0.9\t</s>

\\2-grams:
-0.2\t<s> a\t-0.25
-0.1\ta b\t-0.6
-0.4\tb </s>
-0.3\tb a

\\3-grams:
-0.05\t<s> a b

\\end\\
"""

# log10 P(word | context) worked out by hand from the table above with ARPA's back-off rule
HAND_VALUES = [
    ((BOS,), "a", -0.2),  # listed bigram
    ((BOS,), "b", -0.5 - 0.7),  # bow(<s>) + P(b)
    ((BOS, "a"), "b", -0.05),  # listed trigram
    (("a", "b"), EOS, -0.6 - 0.4),  # bow(a b) + P(</s> | b)
    ((BOS, "a"), "a", -0.25 - 0.3 - 0.5),  # bow(<s> a) + bow(a) + P(a)
    (("b", "a"), "b", 0.0 - 0.1),  # "b a" has no back-off weight (0), then P(b | a)
    (("a", "b"), "zebra", -10.0),  # not in the model, no <unk>: the default unknown score
]


@pytest.fixture
def hand(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(HAND)
    return path


@pytest.mark.parametrize("context,word,log10", HAND_VALUES)
def test_hand_computed_scores(hand, context, word, log10):
    model = ARPALanguageModel(hand)
    assert model.order == 3
    logp, after = model.score(context, word)
    assert logp == pytest.approx(log10 * math.log(10))
    assert after == (context + (word,))[-2:]


def test_gzip_reads_the_same(hand, tmp_path):
    packed = tmp_path / "hand.arpa.gz"
    packed.write_bytes(gzip.compress(hand.read_bytes()))
    plain, zipped = ARPALanguageModel(hand), ARPALanguageModel(packed)
    for context, word, _ in HAND_VALUES:
        assert zipped.score(context, word) == plain.score(context, word)


def test_sentence_score_adds_the_end(hand):
    model = ARPALanguageModel(hand)
    assert sentence_log_prob(model, ["a", "b"]) == pytest.approx((-0.2 - 0.05 - 0.6 - 0.4) * math.log(10))


def test_unk_entry_scores_unknown_words(tmp_path):
    path = tmp_path / "unk.arpa"
    path.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\ta\n-2.5\t<unk>\n\n\\end\\\n")
    model = ARPALanguageModel(path)
    assert model.score((), "nothing")[0] == pytest.approx(-2.5 * math.log(10))
    assert model.start() == ()


@pytest.mark.parametrize("text,problem", [
    (HAND.replace("ngram 2=4", "ngram 2=5"), "announces 5 2-grams but the file lists 4"),
    (HAND.replace("-0.1\ta b\t-0.6", "-0.1\ta\t-0.6\tx\ty"), "line 14: a 2-gram line needs"),
    (HAND.replace("-0.7\tb", "high\tb"), "line 9: a probability or back-off weight is not a number"),
    (HAND.replace("-0.7\tb", "0.5\tb"), "line 9: log10 probabilities must be finite and <= 0"),
    (HAND.replace("\\3-grams:", "\\4-grams:"), r"line 18: section \\4-grams: is not announced"),
    ("hello\n", "line 1: text before"),
    ("", "not an ARPA file"),
])
def test_bad_files_name_file_and_line(tmp_path, text, problem):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(LanguageModelError, match=problem) as caught:
        ARPALanguageModel(path)
    assert str(path) in str(caught.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(LanguageModelError, match="cannot read"):
        ARPALanguageModel(tmp_path / "absent.arpa")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\xff\xfe\x00mmap")
    with pytest.raises(LanguageModelError, match="not UTF-8"):
        ARPALanguageModel(binary)


CORPUS = ["one two three", "two two", "three one two one", "one", "four four four two"]


def witten_bell_reference(history, word, sentences, order):
    """Witten-Bell interpolation computed from raw counts, recursively (no ARPA, no back-off weights)."""
    if not history:
        counts = [w for s in sentences for w in s[1:]]
        seen = len(set(counts))
        return (counts.count(word) + seen / (seen + 1)) / (len(counts) + seen)
    history = tuple(history)
    following = [s[i] for s in sentences for i in range(1, len(s)) if tuple(s[max(0, i - len(history)):i]) == history
                 and i >= len(history)]
    lower = witten_bell_reference(history[1:], word, sentences, order)
    if not following:
        return lower
    n = len(set(following))
    return (following.count(word) + n * lower) / (len(following) + n)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_built_model_is_witten_bell_and_normalised(tmp_path, order):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS) + "\n\n")
    arpa = tmp_path / "corpus.arpa"
    build_arpa(text, arpa, order=order)
    model = ARPALanguageModel(arpa)
    assert model.order == order
    sentences = [[BOS, *line.split(), EOS] for line in CORPUS]
    words = ["one", "two", "three", "four", EOS, UNK]
    histories = [()] + [h for n in range(1, order) for h in itertools.product([BOS, "one", "two", "four"], repeat=n)]
    for history in histories:
        if BOS in history[1:]:
            continue
        probabilities = [math.exp(model._log_prob(history, w)) for w in words]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5), history
        for word, p in zip(words[:-1], probabilities):
            assert p == pytest.approx(witten_bell_reference(history, word, sentences, order), rel=1e-5)


def test_lm_command(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS))
    out = tmp_path / "lm.arpa.gz"
    done = subprocess.run([sys.executable, "-m", "tinyasr", "lm", str(text), "--output", str(out), "--order", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ARPALanguageModel(out).order == 2
    done = subprocess.run([sys.executable, "-m", "tinyasr", "lm", str(tmp_path / "absent.txt"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "absent.txt: cannot read the text" in done.stderr
    assert "Traceback" not in done.stderr


def test_order_is_checked(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("a b\n")
    with pytest.raises(TinyASRError, match="order must be from 1 to 10"):
        build_arpa(text, tmp_path / "x.arpa", order=0)


# ---------------------------------------------------------------------------
# KenLM files (the optional kenlm package)


def test_kenlm_scores_as_the_arpa_reader(tmp_path):
    """KenLM's own reading of an ARPA file (an independent implementation) gives every score ours gives, so
    the beam search's LM terms are the same through either; binary files take KenLM's path."""
    pytest.importorskip("kenlm")
    from tinyasr.decoding.lm import KenLMLanguageModel, witten_bell, write_arpa

    path = tmp_path / "wb.arpa"
    write_arpa(witten_bell(CORPUS, order=3), path)
    ours, theirs = ARPALanguageModel(path), KenLMLanguageModel(path)
    assert theirs.order == ours.order == 3 and "two" in theirs and "seven" not in theirs
    words = ["one", "two", "three", "four", EOS]
    for sentence in itertools.product(words[:4], repeat=3):
        assert sentence_log_prob(theirs, sentence) == pytest.approx(sentence_log_prob(ours, sentence), abs=1e-5)


def test_kenlm_binary_without_the_package_names_it(tmp_path, monkeypatch, hand):
    from tinyasr.decoding.lm import KENLM_MAGIC, load_language_model

    binary = tmp_path / "model.binary"
    binary.write_bytes(KENLM_MAGIC + b" format version 5\n\0\0garbage")
    monkeypatch.setitem(sys.modules, "kenlm", None)  # import fails as when it is not installed
    with pytest.raises(LanguageModelError, match=r"model.binary is a KenLM binary file: .*pip install kenlm"):
        load_language_model(binary)
    monkeypatch.undo()
    pytest.importorskip("kenlm")
    with pytest.raises(LanguageModelError, match="model.binary: kenlm cannot read"):
        load_language_model(binary)
    assert isinstance(load_language_model(hand), ARPALanguageModel)
