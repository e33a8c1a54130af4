"""CTC prefix beam search against enumerating every alignment of small random score matrices.

The reference sums the probability of every frame-level path that collapses to each text, then adds the
LM (sentence by sentence, </s> included), beta per word and hotword boosts found by matching whole words
in the finished text: nothing of the search's incremental bookkeeping.  With a beam wide enough to keep
every prefix, the search must return the same best text with the same score.
"""

import itertools
import math

import numpy as np
import pytest

from tinyasr.decoding.beam import BeamDecoder, ctc_align, ctc_beam_search, ctc_log_likelihood, token_piece
from tinyasr.decoding.ctc import ctc_greedy
from tinyasr.decoding.hotwords import START, HotwordTree, parse_hotword, read_hotwords
from tinyasr.decoding.lm import ARPALanguageModel, sentence_log_prob, witten_bell, write_arpa
from tinyasr.decoding.specs import BeamSearch, CTCSpec
from tinyasr.errors import TinyASRError

VOCABULARIES = {
    "chars": ([" ", "a", "b"], "chars"),
    "subword": (["\u2581a", "b", "\u2581b"], "subword"),
    "words": (["a", "b", "ab"], "words"),
}
EXHAUSTIVE = dict(beam=10_000, token_min_logp=-1e9, beam_prune=1e9)


def random_scores(rng, frames, classes):
    return rng.normal(size=(frames, classes)) * 2.0  # logits: softmax is applied when decoding


def log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def text_words(ids, vocabulary, kind):
    return "".join(token_piece(vocabulary[i], kind, False) for i in ids).split()


def hotword_bonus(words, hotwords):
    """Left to right, the longest phrase starting at each word; its boost; matches do not overlap."""
    phrases = sorted(((p.split(), b) for p, b in hotwords), key=lambda pb: -len(pb[0]))
    bonus, i = 0.0, 0
    while i < len(words):
        for phrase, boost in phrases:
            if words[i:i + len(phrase)] == phrase:
                bonus, i = bonus + boost, i + len(phrase)
                break
        else:
            i += 1
    return bonus


def sequence_scores(scores, vocabulary, kind, lm=None, alpha=0.0, beta=0.0, hotwords=()):
    """token ids -> exact score, by every alignment (blank last)."""
    log_probs = log_softmax(scores)
    blank = len(vocabulary)
    totals = {}
    for path in itertools.product(range(blank + 1), repeat=len(log_probs)):
        ids = tuple(c for c, _ in itertools.groupby(path) if c != blank)
        logp = log_probs[np.arange(len(path)), path].sum()
        totals[ids] = np.logaddexp(totals.get(ids, -np.inf), logp)
    exact = {}
    for ids, logp in totals.items():
        words = text_words(ids, vocabulary, kind)
        extra = alpha * sentence_log_prob(lm, words) + beta * len(words) if lm else 0.0
        exact[ids] = logp + extra + hotword_bonus(words, hotwords)
    return exact


def brute_force(scores, vocabulary, kind, lm=None, alpha=0.0, beta=0.0, hotwords=()):
    """text -> exact score of its best token sequence (different ones may spell one text: subwords; the search
    keeps them apart too)."""
    texts = {}
    for ids, score in sequence_scores(scores, vocabulary, kind, lm, alpha, beta, hotwords).items():
        key = " ".join(text_words(ids, vocabulary, kind))
        texts[key] = max(texts.get(key, -np.inf), score)
    return texts


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "small.arpa"
    write_arpa(witten_bell(["a b", "ab ab a", "b a b", "a", "ab b"], order=3), path)
    return ARPALanguageModel(path)


def search(scores, vocabulary, kind, **options):
    spec = CTCSpec(output="o", blank=len(vocabulary), vocabulary=tuple(vocabulary), vocabulary_type=kind,
                   logits="logits")
    decoder = BeamDecoder(BeamSearch(**{**EXHAUSTIVE, **options}), spec)
    pieces = [token_piece(t, kind, False) for t in vocabulary] + [""]
    return decoder, decoder.search(log_softmax(scores), len(vocabulary), pieces)


@pytest.mark.parametrize("kind", VOCABULARIES)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_lm", [False, True])
def test_exhaustive_beam_finds_the_brute_force_best(kind, seed, with_lm, lm, tmp_path):
    vocabulary, kind = VOCABULARIES[kind]
    rng = np.random.default_rng(seed)
    scores = random_scores(rng, 6, len(vocabulary) + 1)
    options = dict(lm=lm.path, alpha=0.8, beta=0.3) if with_lm else {}
    reference = brute_force(scores, vocabulary, kind, lm if with_lm else None, 0.8, 0.3)
    _, found = search(scores, vocabulary, kind, **options)
    best_score, best = found[0]
    best_text = " ".join(text_words(best.tokens(), vocabulary, kind))
    expected = max(reference, key=reference.get)
    assert best_text == expected
    assert best_score == pytest.approx(reference[expected], abs=1e-9)
    for score, prefix in found:  # every hypothesis kept scores as the reference says
        assert score <= reference[" ".join(text_words(prefix.tokens(), vocabulary, kind))] + 1e-9


@pytest.mark.parametrize("kind", VOCABULARIES)
@pytest.mark.parametrize("beam", [1, 2, 3])
@pytest.mark.parametrize("with_lm", [False, True])
def test_any_beam_scores_at_least_greedy(kind, beam, with_lm, lm):
    """However narrow the beam, the hypothesis chosen scores at least what greedy decoding's does under the same
    scoring (every alignment summed, plus LM, beta and hotwords: the reference's); the scores the search
    reports are lower bounds of that exact score (the alignments that stayed in the beam)."""
    vocabulary, kind = VOCABULARIES[kind]
    options = dict(lm=lm.path, alpha=0.8, beta=0.3, hotwords=(("ab", 1.5), ("b", 0.7))) if with_lm else {}
    for seed in range(8):
        scores = random_scores(np.random.default_rng(200 + seed), 6, len(vocabulary) + 1)
        reference = sequence_scores(scores, vocabulary, kind, lm if with_lm else None, 0.8, 0.3,
                                    options.get("hotwords", ()))
        greedy = tuple(c for c, _ in itertools.groupby(scores.argmax(axis=1)) if c != len(vocabulary))
        _, found = search(scores, vocabulary, kind, beam=beam, **options)
        assert reference[tuple(found[0][1].tokens())] >= reference[greedy] - 1e-9
        for score, prefix in found:
            assert score <= reference[tuple(prefix.tokens())] + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_exhaustive_beam_with_hotwords_matches_the_reference(seed, lm):
    vocabulary, kind = VOCABULARIES["chars"]
    hotwords = (("ab", 1.5), ("b", 0.7), ("ab a", 2.5))
    scores = random_scores(np.random.default_rng(100 + seed), 6, 4)
    reference = brute_force(scores, vocabulary, kind, lm, 0.5, 0.2, hotwords)
    _, found = search(scores, vocabulary, kind, lm=lm.path, alpha=0.5, beta=0.2, hotwords=hotwords)
    expected = max(reference, key=reference.get)
    assert " ".join(text_words(found[0][1].tokens(), vocabulary, kind)) == expected
    assert found[0][0] == pytest.approx(reference[expected], abs=1e-9)
    for score, prefix in found:
        assert score <= reference[" ".join(text_words(prefix.tokens(), vocabulary, kind))] + 1e-9


def test_hotword_partial_matches_are_taken_back():
    tree = HotwordTree([("cat", 3.0), ("new york", 4.0), ("new", 1.0)])

    def total(text):
        state, score = tree.advance(START, text)
        return score + tree.finish(state)

    assert total(" cat") == pytest.approx(3.0)
    assert total(" cats") == pytest.approx(0.0)  # the word goes on past the phrase
    assert total(" concatenate") == pytest.approx(0.0)  # matches start at word starts
    assert total(" ca") == pytest.approx(0.0)  # unfinished at the end
    assert total(" new york cat") == pytest.approx(7.0)
    assert total(" new yorkshire") == pytest.approx(1.0)  # "new" completed, "new york" not
    assert total(" new new york") == pytest.approx(5.0)
    assert total(" NEW York") == pytest.approx(4.0)  # case-folded


def test_hotword_parsing(tmp_path):
    assert parse_hotword("alexa:3.5") == ("alexa", 3.5)
    assert parse_hotword("  new   york ") == ("new york", 2.0)
    assert parse_hotword("ratio 1:x") == ("ratio 1:x", 2.0)  # not a number after the colon
    path = tmp_path / "hot.txt"
    path.write_text("# names\nalexa:3\n\nnew york\n")
    assert read_hotwords(path) == [("alexa", 3.0), ("new york", 2.0)]
    with pytest.raises(TinyASRError, match="no text"):
        parse_hotword(":3")
    with pytest.raises(TinyASRError, match="hotword"):
        BeamSearch(hotwords=[("x", "high")])


def test_beam_without_lm_agrees_with_greedy_on_peaky_scores():
    """One dominant class a frame: the best path is the best text, so beam and greedy agree, times too."""
    rng = np.random.default_rng(3)
    vocabulary = (" ", "a", "b", "c")
    best = rng.integers(0, 5, size=400)  # a few hundred tokens: alignment states past int8
    scores = np.full((400, 5), -12.0)
    scores[np.arange(400), best] = 0.0
    spec = CTCSpec(output="o", blank=4, vocabulary=vocabulary, logits="logits")
    greedy = ctc_greedy(scores, spec, frame_seconds=0.04)
    beam = ctc_beam_search(scores, spec, BeamSearch(beam=4), frame_seconds=0.04)
    assert beam.text == greedy.text
    assert [(t.id, t.start, t.end) for t in beam.tokens] == [(t.id, t.start, t.end) for t in greedy.tokens]
    assert [w.confidence for w in beam.words] == pytest.approx([w.confidence for w in greedy.words])


def test_alignment_is_the_viterbi_path():
    """ctc_align against enumerating every path that collapses to the ids."""
    rng = np.random.default_rng(5)
    log_probs = log_softmax(random_scores(rng, 7, 3))
    ids = [0, 1, 1]
    best, best_path = -np.inf, None
    for path in itertools.product(range(3), repeat=7):
        if [c for c, _ in itertools.groupby(path) if c != 2] == ids:
            logp = log_probs[np.arange(7), path].sum()
            if logp > best:
                best, best_path = logp, path
    spans, frame = [], 0
    for c, group in itertools.groupby(best_path):
        n = len(list(group))
        if c != 2:
            spans.append((frame, frame + n))
        frame += n
    assert ctc_align(log_probs, ids, blank=2) == spans


def test_log_likelihood_sums_every_alignment():
    """ctc_log_likelihood against summing every path that collapses to the ids (repeats, none, too many)."""
    rng = np.random.default_rng(6)
    log_probs = log_softmax(random_scores(rng, 6, 3))
    totals = {}
    for path in itertools.product(range(3), repeat=6):
        ids = tuple(c for c, _ in itertools.groupby(path) if c != 2)
        totals[ids] = np.logaddexp(totals.get(ids, -np.inf), log_probs[np.arange(6), path].sum())
    for ids in [(), (0,), (0, 1), (1, 1), (0, 0, 1), (1, 0, 1)]:
        assert ctc_log_likelihood(log_probs, ids, blank=2) == pytest.approx(totals[ids], abs=1e-9)
    assert ctc_log_likelihood(log_probs, (0, 0, 0, 0), blank=2) == -np.inf  # repeats need 7 frames


def test_beam_options_are_checked():
    for bad in (dict(beam=0), dict(beam=2.5), dict(alpha=math.nan), dict(beam_prune=0), dict(hotwords="abc"),
                dict(lm=3)):
        with pytest.raises(TinyASRError, match="BeamSearch"):
            BeamSearch(**bad)
    assert BeamSearch(hotwords=["a:2", ("b c", 1)]).hotwords == (("a", 2.0), ("b c", 1.0))


def spelled(text, rng, confusions, chars, frames_per_char=3):
    """Logits that spell ``text`` (a blank between characters), with ``confusions`` {char: (other, p)}: that
    character's frames give ``other`` probability p, so greedy decoding reads ``other`` when p > 0.5."""
    rows = []
    blank = len(chars)
    for char in text:
        for _ in range(frames_per_char):
            probs = np.full(blank + 1, 0.01)
            other, p = confusions.get(char, (None, 0.0))
            probs[chars.index(char)] = 1.0 - p
            if other is not None:
                probs[chars.index(other)] = p
            rows.append(probs / probs.sum())
        rows.append(np.eye(blank + 1)[blank] * 0.97 + 0.01)
    return np.log(np.array(rows)) + rng.normal(scale=0.05, size=(len(rows), blank + 1))


def test_hotword_recall_rises_without_false_insertions():
    """A synthetic set: "cat" is heard as "cot" (its 'a' is 40 % 'a', 60 % 'o'); sentences that really say "cot"
    give 'o' 90 %.  Boosting "cat" recovers it and inserts it nowhere it was not said."""
    chars = [" ", "a", "c", "o", "t", "d", "g"]
    spec = CTCSpec(output="o", blank=len(chars), vocabulary=tuple(chars), logits="log_probs")
    rng = np.random.default_rng(0)
    said_cat = [spelled(t, rng, {"a": ("o", 0.6)}, chars) for t in ("cat", "dog cat", "cat dog", "a cat") * 5]
    said_cot = [spelled(t, rng, {"o": ("a", 0.1)}, chars) for t in ("cot", "dog cot", "cot dog", "a cot") * 5]

    def count_cat(items, options):
        return sum(ctc_beam_search(s, spec, options, frame_seconds=0.02).text.split().count("cat") for s in items)

    greedy_recall = sum(ctc_greedy(s, spec, frame_seconds=0.02).text.split().count("cat") for s in said_cat)
    boosted = BeamSearch(beam=8, hotwords=[("cat", 3.0)])
    assert greedy_recall == 0 and count_cat(said_cat, BeamSearch(beam=8)) == 0
    assert count_cat(said_cat, boosted) == len(said_cat)  # recall 0 -> 1
    assert count_cat(said_cot, boosted) == 0  # no false insertion where "cot" was said


def test_recognizer_decoding_default_and_per_call(tmp_path):
    import tinyasr
    from _paths import REPO

    sample = REPO / "tinyasr" / "models" / "sample_digits.wav"
    text = (REPO / "tinyasr" / "models" / "sample_digits.txt").read_text().strip()
    beam = tinyasr.Recognizer(decoding=tinyasr.BeamSearch(beam=4, hotwords=["nine:1"]))
    done = []
    result = beam.transcribe(sample, progress=done.append)
    assert result.text == text and done == [pytest.approx(result.duration)]
    greedy = beam.transcribe(sample, decoding=tinyasr.Greedy())
    assert greedy.text == text
    assert [w.text for w in result.words] == [w.text for w in greedy.words]
    for ours, theirs in zip(result.words, greedy.words):  # Viterbi times stay near the greedy spikes
        assert abs(ours.start - theirs.start) <= 0.2
    # a hotword strong enough to replace every digit shows the per-call options are the ones used
    forced = beam.transcribe(sample, decoding=tinyasr.BeamSearch(beam=4, hotwords=["four:40"]))
    assert forced.text.split().count("four") > 0
    assert beam.with_decoding(tinyasr.Greedy()).decoding is None
    with pytest.raises(TinyASRError, match="decoding must be tinyasr.Greedy"):
        tinyasr.Recognizer(decoding="beam")
    with pytest.raises(TinyASRError, match="cannot read the language model"):
        tinyasr.Recognizer(decoding=tinyasr.BeamSearch(lm=str(tmp_path / "absent.arpa")))
