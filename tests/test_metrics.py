import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402

from deepsynth.evaluation import (  # noqa: E402
    METRIC_MODULE_PATH,
    compute_metrics,
    exact_match,
    f1_score,
    normalize_answer,
    rouge_scores,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The  Cat, sat!", "cat sat"),  # case, punctuation, article, whitespace
        ("An ant and the Anthem.", "ant and anthem"),  # articles only as whole words
        ("a\tb  c", "b c"),  # "a" is an article; tabs are whitespace
        ("$45.2M", "452m"),  # punctuation inside numbers goes too (official rule)
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad_v2(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_ignores_case_articles_punctuation():
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0
    assert exact_match("dog", ["a cat", "The Dog!"]) == 1.0  # any gold counts


def test_f1_partial_overlap_by_hand():
    # pred -> [big, red, dog], gold -> [red, dog, barked]: 2 common, P = R = 2/3, F1 = 2/3
    assert f1_score("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    # pred -> [red], gold -> [red, dog]: P = 1, R = 1/2, F1 = 2 * 0.5 / 1.5 = 2/3
    assert f1_score("red", "red dog") == pytest.approx(2 / 3)
    # repeated tokens count once per occurrence: pred [dog, dog], gold [dog] -> P 1/2, R 1 -> 2/3
    assert f1_score("dog dog", "dog") == pytest.approx(2 / 3)
    assert f1_score("cat", "dog") == 0.0


def test_multiple_golds_take_the_best():
    assert f1_score("red dog", ["blue cat", "red dog runs", "dog"]) == pytest.approx(0.8)  # 2*1*(2/3)/(5/3)


def test_empty_gold_means_unanswerable():
    for golds in ("", [], ["", "  "]):
        assert exact_match("", golds) == 1.0
        assert f1_score("", golds) == 1.0
        assert exact_match("Paris", golds) == 0.0
        assert f1_score("Paris", golds) == 0.0
    assert f1_score("", "Paris") == 0.0
    assert f1_score("the", "a") == 1.0  # both normalise to nothing


def test_rouge_by_hand():
    # tokens pred [the cat sat on the mat], ref [the cat is on the mat]
    # unigrams: 5 of 6 match -> 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5 -> 3/5; LCS = 5 -> 5/6
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6})


def test_rouge_lsum_splits_sentences_on_newlines():
    # As one sequence the LCS of [the dog the cat] / [the cat the dog] is 2 of 4 -> rougeL 0.5;
    # per line each reference sentence is matched by a prediction line -> rougeLsum 1.0.
    scores = rouge_scores(["the dog\nthe cat"], ["the cat\nthe dog"])
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)


def test_compute_metrics_percent_scale_and_names():
    preds = ["The cat.", "the big red dog", ""]
    refs = ["cat", ["a red dog barked"], []]
    result = compute_metrics(preds, refs, metrics=["exact_match", "f1_score"])
    assert result == pytest.approx({"exact_match": 200 / 3, "f1_score": (100 + 200 / 3 + 100) / 3})
    full = compute_metrics(["the cat sat on the mat"], ["the cat is on the mat"])
    assert set(full) == {"exact_match", "f1_score", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert full["rouge2"] == pytest.approx(60.0)
    assert full["f1_score"] == pytest.approx(75.0)  # [cat sat on mat] vs [cat is on mat]: 3 of 4
    assert compute_metrics(["x"], ["x"], metrics="f1") == {"f1_score": 100.0}


def test_compute_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["a"], ["a"], metrics=["bleu"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics([], [])


def test_local_evaluate_module_matches_functions():
    import evaluate

    metric = evaluate.load(METRIC_MODULE_PATH)
    preds = ["The cat.", "the big red dog", "Paris"]
    refs = [["cat", "a dog"], ["a red dog barked"], []]
    assert metric.compute(predictions=preds, references=refs) == pytest.approx(compute_metrics(preds, refs))
    # single-string references are accepted as well
    assert metric.compute(predictions=["The cat."], references=["cat"], metrics=["exact_match"]) == {
        "exact_match": 100.0
    }


def test_character_error_rate_hand_computed():
    from deepsynth.evaluation.metrics import character_error_rate, levenshtein

    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    # (3 + 0) edits over (7 + 4) reference characters
    assert character_error_rate(["kitten", "same"], ["sitting", "same"]) == 3 / 11
