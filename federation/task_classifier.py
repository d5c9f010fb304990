"""Which task a prompt asks for, read as words: a multinomial naive Bayes model over word unigrams and bigrams
(and the task keywords, matched at word boundaries, as extra features; :func:`classify_task` is the
keyword rule alone), trained on
the shipped labelled prompts (``federation/data/task_prompts.jsonl``: planning, creative, harmonization and
none — greetings, general questions, a birthday "plan").

Contract: :meth:`TaskClassifier.predict` gives (task or None for "none", confidence = the model's probability
of its choice); :meth:`TaskClassifier.shipped` is the model trained on every shipped prompt (once per
process, ~10 ms). The policy applies a confidence threshold and the fallback (:func:`federation.policy.decide`).
Held-out accuracy: ``python -m bench.task_routing`` -> ``bench/results/task-routing.json``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# words, matched at word boundaries on the lower-cased prompt ("plant" is not "plan", "roast" is not "roas");
# a trailing \w* accepts inflections (taglines, allocating, normalised)
_TASK_PATTERNS: dict[str, tuple[str, ...]] = {
    "planning": (
        r"plan(s|ned|ning)?", r"budget\w*", r"allocat\w*", r"forecast\w*", r"i?roas", r"spend\w*",
        r"media mix", r"flight(s|ing)?", r"invest\w*",
    ),
    "creative": (
        r"ads?", r"ad (copy|line|idea)s?", r"copy(writing)?", r"headline\w*", r"creative\w*", r"slogan\w*",
        r"tagline\w*", r"banner\w*", r"write", r"draft", r"compose",
    ),
    "harmonization": (
        r"map(s|ped|ping)?", r"fields?", r"schema\w*", r"harmoni[sz]\w*", r"columns?", r"normali[sz]\w*",
    ),
}  # fmt: skip
_TASK_RE = {task: [re.compile(rf"\b(?:{p})\b") for p in pats] for task, pats in _TASK_PATTERNS.items()}


def task_keywords() -> dict[str, list[re.Pattern[str]]]:
    """The task keywords, compiled (features of :mod:`federation.task_classifier`)."""
    return {task: list(res) for task, res in _TASK_RE.items()}


def classify_task(text: str) -> str | None:
    """Task from keywords at word boundaries (documented in README): the task with the most hits; None when no
    task has any, or when two tie (no confident choice: the policy's default or no task adapter applies)."""
    lowered = text.lower()
    scores = {task: sum(len(r.findall(lowered)) for r in res) for task, res in _TASK_RE.items()}
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] == 0 or ranked[0] == ranked[1]:
        return None
    return max(scores, key=lambda t: scores[t])


DATA = Path(__file__).with_name("data") / "task_prompts.jsonl"
NONE = "none"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def features(text: str, keywords: dict[str, list[re.Pattern[str]]] | None = None) -> list[str]:
    """Lower-cased words, adjacent word pairs, and ``kw:<task>`` once per task keyword found."""
    low = text.lower()
    words = _WORD.findall(low)
    out = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    for task, patterns in (keywords or {}).items():
        out += [f"kw:{task}"] * sum(len(p.findall(low)) for p in patterns)
    return out


class TaskClassifier:
    """Multinomial naive Bayes (Laplace smoothing ``alpha``) over :func:`features`."""

    def __init__(
        self,
        examples: Iterable[tuple[str, str | None]],
        keywords: dict[str, list[re.Pattern[str]]] | None = None,
        alpha: float = 0.5,
    ) -> None:
        self._keywords = keywords
        self._alpha = alpha
        counts: dict[str, Counter[str]] = {}
        docs: Counter[str] = Counter()
        for text, task in examples:
            label = task or NONE
            counts.setdefault(label, Counter()).update(features(text, keywords))
            docs[label] += 1
        self.labels = sorted(counts)
        total = sum(docs.values())
        self._prior = {c: math.log(docs[c] / total) for c in self.labels}
        self._vocab = set().union(*counts.values())
        self._counts = counts
        self._totals = {c: sum(counts[c].values()) for c in self.labels}

    def probabilities(self, text: str) -> dict[str, float]:
        """Label -> probability (words never seen in training are ignored)."""
        feats = [f for f in features(text, self._keywords) if f in self._vocab]
        v = len(self._vocab)
        logp = {}
        for c in self.labels:
            denom = math.log(self._totals[c] + self._alpha * v)
            logp[c] = self._prior[c] + sum(math.log(self._counts[c][f] + self._alpha) - denom for f in feats)
        top = max(logp.values())
        z = sum(math.exp(x - top) for x in logp.values())
        return {c: math.exp(x - top) / z for c, x in logp.items()}

    def predict(self, text: str) -> tuple[str | None, float]:
        """(task, confidence); task None when "none" wins."""
        probs = self.probabilities(text)
        label = max(probs, key=lambda c: probs[c])
        return (None if label == NONE else label), probs[label]

    @classmethod
    def shipped(cls) -> TaskClassifier:
        """Trained on every shipped labelled prompt (cached per process)."""
        return _shipped()


def load_examples(path: Path = DATA) -> list[tuple[str, str | None]]:
    """The labelled prompts: (prompt, task or None)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["prompt"], r["task"]) for r in rows]


@functools.lru_cache(maxsize=1)
def _shipped() -> TaskClassifier:
    return TaskClassifier(load_examples(), task_keywords())
