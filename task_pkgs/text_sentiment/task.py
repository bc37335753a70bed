"""Lexicon-based sentiment for English text, with negation and intensifiers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator import SimpleTask
from orchestrator.errors import FatalError

LEXICON = Path(__file__).parent / "lexicon.json"


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NEUTRAL_THRESHOLD = 0.05  # |score| below this is neutral
NEGATION_FACTOR = -0.75  # "not good" is bad, but less bad than "bad"
NEGATION_SCOPE = 3  # words after a negator that it reaches
CONTRAST_BEFORE, CONTRAST_AFTER = 0.5, 1.5  # "X but Y": Y counts more than X

NEGATORS = words(
    "not no never none nothing nobody nowhere neither nor without cannot dont doesnt didnt "
    "isnt wasnt arent werent cant couldnt wouldnt shouldnt wont havent hasnt hadnt aint "
    "hardly scarcely rarely seldom"
)
INTENSIFIERS = {
    "very": 1.5,
    "really": 1.3,
    "so": 1.3,
    "too": 1.3,
    "extremely": 1.8,
    "incredibly": 1.7,
    "exceptionally": 1.7,
    "utterly": 1.7,
    "absolutely": 1.6,
    "highly": 1.5,
    "super": 1.5,
    "deeply": 1.5,
    "remarkably": 1.5,
    "totally": 1.4,
    "completely": 1.4,
    "truly": 1.3,
    "especially": 1.3,
    "particularly": 1.3,
    "most": 1.3,
    "quite": 1.2,
    "pretty": 1.2,
    "much": 1.2,
    "rather": 0.9,
    "fairly": 0.8,
    "kinda": 0.7,
    "sorta": 0.7,
    "somewhat": 0.6,
    "mildly": 0.6,
    "partly": 0.6,
    "little": 0.6,
    "slightly": 0.5,
    "marginally": 0.5,
    "barely": 0.4,
}
# "like" after these compares ("looks like rain") rather than likes.
NOT_LIKING = words(
    "look looks looked looking seem seems seemed sound sounds sounded feel feels felt just "
    "something anything nothing more less much exactly is was are were be been"
)
BREAKS = frozenset(".!?;:,")
TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.!?;:,]")


class Task(SimpleTask):
    """Scores each text; the lexicon loads once per replica in ``setup``."""

    def setup(self) -> None:
        try:
            lexicon = json.loads(LEXICON.read_text())
        except (OSError, ValueError) as e:
            raise FatalError(f"cannot read the lexicon {LEXICON}: {e}") from e
        bad = [w for w, s in lexicon.items() if not isinstance(s, int | float) or abs(s) > 1]
        if bad:
            raise FatalError(f"lexicon {LEXICON}: scores outside [-1, 1] for {bad[:5]}")
        self.lexicon: dict[str, float] = {w.lower(): float(s) for w, s in lexicon.items()}

    def process(self, input_data: dict) -> dict:
        texts = ([input_data["text"]] if "text" in input_data else []) + list(
            input_data.get("texts", [])
        )
        params = input_data.get("parameters") or {}
        threshold = float(params.get("neutral_threshold", NEUTRAL_THRESHOLD))
        results = []
        for text in texts:
            score = self.score(text)
            results.append({"text": text, "label": label(score, threshold), "score": score})
        return {"results": results, "count": len(results)}

    def process_batch(self, inputs: list[dict]) -> list[dict]:
        """One output per input document, for dynamic batching."""
        self.ensure_ready()
        return [self.process(document) for document in inputs]

    def score(self, text: str) -> float:
        """The text's sentiment in [-1, 1]: the weighted mean of its sentiment words."""
        contributions: list[list[float]] = []  # [score, weight] per sentiment word
        negation_left = 0
        boost = 1.0
        weight = 1.0
        words = tokens(text)
        for i, token in enumerate(words):
            if token in BREAKS:
                negation_left, boost = 0, 1.0
                if token in ".!?":  # a contrast lasts to the end of its sentence
                    weight = 1.0
                continue
            if token == "but":
                for item in contributions:
                    item[1] *= CONTRAST_BEFORE
                weight = CONTRAST_AFTER
                negation_left, boost = 0, 1.0
                continue
            if token in NEGATORS or token.endswith("n't"):
                negation_left = NEGATION_SCOPE
                continue
            if token in INTENSIFIERS:
                boost *= INTENSIFIERS[token]
                negation_left = max(negation_left - 1, 0)
                continue
            value = self.lexicon.get(token)
            if token == "like" and i and words[i - 1] in NOT_LIKING:
                value = None
            if value is not None:
                value *= boost
                if negation_left:
                    value *= NEGATION_FACTOR
                contributions.append([max(-1.0, min(1.0, value)), weight])
            boost = 1.0
            negation_left = max(negation_left - 1, 0)
        total = sum(w for _, w in contributions)
        if not total:
            return 0.0
        mean = sum(s * w for s, w in contributions) / total
        return round(max(-1.0, min(1.0, mean)), 4)


def tokens(text: str) -> list[str]:
    """Lower-case words (keeping "n't" contractions) and clause-breaking punctuation."""
    return TOKEN.findall(text.lower().replace("\u2019", "'"))


def label(score: float, threshold: float = NEUTRAL_THRESHOLD) -> str:
    if score >= threshold:
        return "positive"
    if score <= -threshold:
        return "negative"
    return "neutral"
