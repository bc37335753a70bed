"""text_sentiment on short English texts whose sentiment is plain."""

import json
from pathlib import Path

import pytest

from orchestrator.errors import ValidationError
from orchestrator.testing import load_package

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("text_sentiment"))


def one(task, text):
    result = task({"text": text})
    assert result["count"] == 1
    assert result["results"][0]["text"] == text
    return result["results"][0]


@pytest.mark.parametrize(
    "text",
    [
        "I love this camera, the pictures are wonderful!",
        "Great service and a really friendly team.",
        "Absolutely fantastic, would recommend.",
    ],
)
def test_clearly_positive(task, text):
    result = one(task, text)
    assert result["label"] == "positive"
    assert result["score"] > 0.5


@pytest.mark.parametrize(
    "text",
    [
        "This is terrible and I hate it.",
        "The worst hotel ever: dirty rooms and rude staff.",
        "A disappointing, boring film.",
    ],
)
def test_clearly_negative(task, text):
    result = one(task, text)
    assert result["label"] == "negative"
    assert result["score"] < -0.5


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is at three o'clock in room 4.",
        "The package arrived on Tuesday.",
        "It looks like rain today.",
    ],
)
def test_neutral(task, text):
    assert one(task, text) == {"text": text, "label": "neutral", "score": 0.0}


@pytest.mark.parametrize(
    ("plain", "negated"),
    [
        ("The food was good.", "The food was not good."),
        ("I like it.", "I don't like it."),
        ("It was bad.", "It wasn't bad."),
        ("That is a problem.", "That is no problem."),
    ],
)
def test_negation_flips_the_label(task, plain, negated):
    plain, negated = one(task, plain), one(task, negated)
    assert plain["label"] != "neutral"
    assert negated["label"] != "neutral"
    assert negated["label"] != plain["label"]
    assert abs(negated["score"]) < abs(plain["score"])  # "not good" is milder than "bad"


def test_intensifiers_strengthen_and_soften(task):
    good, very, slightly = (one(task, t)["score"] for t in ("good", "very good", "slightly good"))
    assert slightly < good < very
    assert one(task, "not very good")["label"] == "negative"


def test_the_clause_after_but_counts_more(task):
    assert one(task, "The food was good but the service was awful.")["label"] == "negative"
    assert one(task, "The service was awful but the food was good.")["label"] == "positive"


@pytest.mark.parametrize("text", ["", "   ", "!!!"])
def test_empty_text_is_neutral(task, text):
    assert one(task, text) == {"text": text, "label": "neutral", "score": 0.0}


def test_texts_are_scored_in_order(task):
    texts = ["I love it", "I hate it", "It is a chair"]
    result = task({"texts": texts})
    assert result["count"] == 3
    assert [r["text"] for r in result["results"]] == texts
    assert [r["label"] for r in result["results"]] == ["positive", "negative", "neutral"]


def test_text_comes_before_texts(task):
    result = task({"text": "great", "texts": ["awful"]})
    assert [r["label"] for r in result["results"]] == ["positive", "negative"]


def test_empty_texts_gives_no_results(task):
    assert task({"texts": []}) == {"results": [], "count": 0}


def test_neutral_threshold_parameter(task):
    document = {"text": "It was fairly decent, slightly good.", "parameters": {}}
    score = task(document)["results"][0]["score"]
    assert 0 < score < 0.5
    document["parameters"]["neutral_threshold"] = 0.5
    assert task(document)["results"][0]["label"] == "neutral"


def test_process_batch_matches_single_calls(task):
    inputs = [{"text": "good"}, {"texts": ["bad", "fine day"]}]
    assert task.task.process_batch(inputs) == [task(document) for document in inputs]


def test_scores_stay_within_bounds(task):
    assert one(task, "extremely incredibly awful")["score"] == -1.0
    assert one(task, "absolutely wonderful! " * 50)["score"] == 1.0


@pytest.mark.parametrize(
    ("document", "field"),
    [({"text": 42}, "text"), ({"texts": "one text"}, "texts"), ({"texts": ["ok", 3]}, "texts/1")],
)
def test_wrong_type_names_the_field(task, document, field):
    with pytest.raises(ValidationError, match=f"field '{field}'"):
        task(document)


def test_text_or_texts_is_required(task):
    with pytest.raises(ValidationError):
        task({"parameters": {}})


def test_lexicon_is_loaded_once_and_in_range(task):
    task({"text": "good"})
    task({"text": "bad"})
    assert task.load_count == 1
    lexicon = json.loads((HERE / "lexicon.json").read_text())
    assert len(lexicon) >= 300
    assert all(-1 <= score <= 1 for score in lexicon.values())
