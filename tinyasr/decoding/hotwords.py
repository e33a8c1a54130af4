"""Hotwords (contextual biasing): words and phrases whose score beam search raises as they are spelled.

A prefix tree over the characters of the phrases (case-folded, single spaces) is walked as a hypothesis
grows, character by character of its text, whatever the vocabulary (characters, subwords, words).  Each
matched character earns its share of the phrase's boost at once, so a hotword's partial spelling survives
beam pruning; if the phrase is not completed (a character leaves the tree, or the word goes on past the
phrase's end) the partial bonus is taken back, so only completed phrases keep a boost — sherpa-onnx's
context-graph idea for transducers, applied here to CTC prefix beam search.  Matches start at word starts
and must end at a word end: "cat" does not boost "concatenate" or "cats".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from tinyasr.errors import TinyASRError

DEFAULT_BOOST = 2.0  # natural-log score added for a completed hotword when none is given


def parse_hotword(text: str, default_boost: float = DEFAULT_BOOST) -> Tuple[str, float]:
    """``"phrase"`` or ``"phrase:boost"`` (the CLI's --hotword and a hotwords file's lines) -> (phrase, boost)."""
    phrase, sep, boost = text.rpartition(":")
    if sep:
        try:
            value = float(boost)
        except ValueError:
            phrase, value = text, default_boost  # a colon inside the phrase, no boost
    else:
        phrase, value = text, default_boost
    phrase = " ".join(phrase.split())
    if not phrase:
        raise TinyASRError(f"hotword {text!r} has no text")
    if not value == value or abs(value) == float("inf"):
        raise TinyASRError(f"hotword {text!r}: the boost must be a finite number")
    return phrase, value


def read_hotwords(path, default_boost: float = DEFAULT_BOOST) -> List[Tuple[str, float]]:
    """A hotwords file: one ``phrase`` or ``phrase:boost`` a line; blank lines and ``#`` comments skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TinyASRError(f"{path}: cannot read the hotwords file: {exc}") from None
    hotwords = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                hotwords.append(parse_hotword(line, default_boost))
            except TinyASRError as exc:
                raise TinyASRError(f"{path}: line {number}: {exc}") from None
    return hotwords


@dataclass(frozen=True)
class HotwordState:
    """Where a hypothesis stands: its tree node (0: at a word start, -1: inside a word no phrase starts),
    the bonus it holds for the match in progress, and the part of it a completed shorter phrase secured."""

    node: int = 0
    held: float = 0.0
    secured: float = 0.0


START = HotwordState()
_OUTSIDE = HotwordState(node=-1)


class HotwordTree:
    """The prefix tree of a hotword list ``[(phrase, boost), ...]``; :meth:`advance` scores text as it grows."""

    def __init__(self, hotwords: Sequence[Tuple[str, float]]):
        self._children: List[Dict[str, int]] = [{}]
        self._step: List[float] = [0.0]  # bonus for reaching the node (the largest share over its phrases)
        self._boost: List[Optional[float]] = [None]  # a phrase's boost where one ends
        self._incoming: List[str] = [" "]  # the character that leads to the node
        for phrase, boost in hotwords:
            text = " ".join(phrase.casefold().split())
            if not text:
                raise TinyASRError(f"hotword {phrase!r} has no text")
            node = 0
            for char in text:
                child = self._children[node].get(char)
                if child is None:
                    child = self._children[node][char] = len(self._children)
                    self._children.append({})
                    self._step.append(-float("inf"))
                    self._boost.append(None)
                    self._incoming.append(char)
                self._step[child] = max(self._step[child], boost / len(text))
                node = child
            self._boost[node] = boost if self._boost[node] is None else max(self._boost[node], boost)

    def __len__(self) -> int:
        return sum(b is not None for b in self._boost)

    def advance(self, state: HotwordState, text: str) -> Tuple[HotwordState, float]:
        """The state after ``text`` (a token's characters, " " at a word boundary) and the score change."""
        delta = 0.0
        for char in text.casefold():
            state, change = self._char(state, " " if char.isspace() else char)
            delta += change
        return state, delta

    def finish(self, state: HotwordState) -> float:
        """The score change at the end of the text: a phrase ending there keeps its boost, a partial one loses it."""
        return self._char(state, " ")[1] if state.node > 0 else 0.0

    def _char(self, state: HotwordState, char: str) -> Tuple[HotwordState, float]:
        node = state.node
        if node == -1:  # inside a word no phrase starts
            return (START if char == " " else _OUTSIDE), 0.0
        if node == 0 and char == " ":
            return START, 0.0
        if char == " " and self._boost[node] is not None:  # a phrase ends at a word end: secure its boost
            boost = self._boost[node]
            child = self._children[node].get(" ")
            if child is None:
                return START, boost - state.held
            return HotwordState(child, boost, boost), boost - state.held  # a longer phrase may go on
        child = self._children[node].get(char)
        if child is not None:
            step = self._step[child]
            return HotwordState(child, state.held + step, state.secured), step
        # the match fails here: keep only what a completed phrase secured
        delta = state.secured - state.held
        if node != 0 and self._incoming[node] == " ":  # after "phrase ", a new word starts: it may begin another phrase
            after, change = self._char(START, char)
            return after, delta + change
        return (START if char == " " else _OUTSIDE), delta
