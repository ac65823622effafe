"""Labelled files, threshold calibration and the judge report, with hand-computed numbers."""

import json
import math

import pytest

from panacea.errors import DataError
from panacea.eval.judge_eval import (
    auroc_interval,
    binary_metrics,
    format_judge_report,
    judge_report,
)
from panacea.judges.calibration import best_threshold, read_labelled
from panacea.judges.base import Verdict


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- reading


def test_read_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('prompt,response,label\n"How, exactly?","Like ""this"".",1\nq,r,0\nq2,,false\n')
    d = read_labelled(csv_path)
    assert d.prompts == ["How, exactly?", "q", "q2"] and d.responses == ['Like "this".', "r", ""]
    assert d.labels == [1, 0, 0]
    rows = [{"prompt": "a", "response": "b", "label": True}, {"prompt": "c", "response": "d", "label": "0"},
            {"prompt": "e", "response": "f", "label": 1.0, "extra": "ignored"}]
    d = read_labelled(write_jsonl(tmp_path / "a.jsonl", rows))
    assert d.labels == [1, 0, 1] and len(d) == 3


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("m.csv", "prompt,answer,label\nq,r,1\n", "missing column(s) response"),
        ("m.jsonl", '{"prompt": "q", "label": 1}\n', "line 1: missing field(s) response"),
        ("l.jsonl", '{"prompt": "q", "response": "r", "label": 1}\n{"prompt": "q", "response": "r", "label": 2}\n',
         "line 2: label must be 0/1 or true/false, got 2"),
        ("l.csv", "prompt,response,label\nq,r,1\nq,r,maybe\n", "line 3: label must be 0/1 or true/false, got 'maybe'"),
        ("one.jsonl", '{"prompt": "q", "response": "r", "label": 1}\n', "every label is 1"),
        ("e.jsonl", "\n", "has no rows"),
        ("bad.jsonl", "prompt,response,label\n", "line 1: invalid JSON"),
        ("t.jsonl", '{"prompt": 3, "response": "r", "label": 1}\n', "field 'prompt' must be a string"),
    ],
)
def test_bad_labelled_files(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_labelled(path)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(DataError, match="not found"):
        read_labelled("/nonexistent/labels.csv")


# --------------------------------------------------------------------------- calibration


def test_best_threshold_on_a_synthetic_set():
    neg = [0.1, 0.2, 0.3, 0.6]
    pos = [0.4, 0.5, 0.7, 0.8, 0.9]
    scores, labels = neg + pos, [0] * 4 + [1] * 5
    # by hand: t = 0.35 → TPR 5/5, TNR 3/4 → BA 0.875; t = 0.65 → 3/5, 4/4 → 0.8; t = 0.45 → 4/5, 3/4
    t, ba = best_threshold(scores, labels)
    assert t == pytest.approx(0.35) and ba == pytest.approx(0.875)


def test_best_threshold_separable_and_degenerate():
    t, ba = best_threshold([0.9, 0.2, 0.6, 0.1], [1, 0, 1, 0])
    assert t == pytest.approx(0.4) and ba == 1.0  # the middle of the gap between 0.2 and 0.6
    t, ba = best_threshold([0.5, 0.5, 0.5], [1, 0, 1])
    assert t == 0.5 and ba == 0.5  # one score: everything harmful (ties go to the lower threshold)
    t, ba = best_threshold([0.2, 0.8], [1, 0])  # inverted judge: the best is a constant decision
    assert ba == 0.5
    with pytest.raises(ValueError):
        best_threshold([0.1, 0.2], [1, 1])


# --------------------------------------------------------------------------- report


def test_binary_metrics_by_hand():
    m = binary_metrics([True, True, False, False, True], [1, 0, 1, 0, 1])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert math.isnan(binary_metrics([False, False], [0, 0])["precision"])


class ScoreJudge:
    """Reads its score from the response text ("0.9" → 0.9), harmful at >= 0.5."""

    name = "fixed"
    threshold = 0.5

    def __call__(self, prompts, responses):
        return [Verdict(harmful=float(r) >= 0.5, score=float(r)) for r in responses]


def test_judge_report_numbers_by_hand(tmp_path):
    pos, neg = ["0.9", "0.8", "0.4"], ["0.7", "0.3", "0.2", "0.1"]
    rows = [{"prompt": "p", "response": r, "label": 1} for r in pos]
    rows += [{"prompt": "p", "response": r, "label": 0} for r in neg]
    rep = judge_report(ScoreJudge(), read_labelled(write_jsonl(tmp_path / "d.jsonl", rows)))
    # AUROC: 12 (pos, neg) pairs; 0.9 and 0.8 beat all 4, 0.4 beats 3 (not 0.7) → 11/12
    assert rep["auroc"] == pytest.approx(11 / 12)
    # at 0.5: TP 2 (0.9, 0.8), FN 1 (0.4), FP 1 (0.7), TN 3
    assert (rep["tp"], rep["fn"], rep["fp"], rep["tn"]) == (2, 1, 1, 3)
    assert rep["accuracy"] == pytest.approx(5 / 7) and rep["f1"] == pytest.approx(2 / 3)
    lo, hi = rep["auroc_ci"]
    assert 0 <= lo < 11 / 12 < hi <= 1
    assert rep["judge"] == {"judge": "fixed", "threshold": 0.5}
    assert len(rep["items"]) == 7 and rep["items"][0] == {"label": 1, "harmful": True, "score": 0.9}
    text = format_judge_report(rep)
    assert "AUROC      0.917" in text and "accuracy   0.714" in text and "F1         0.667" in text


def test_auroc_interval():
    lo, hi = auroc_interval(0.5, 50, 50)
    assert lo == pytest.approx(0.5 - 1.96 * math.sqrt((0.25 + 49 * (1 / 3 - 0.25) * 2) / 2500), abs=1e-9)
    assert auroc_interval(1.0, 5, 5) == (1.0, 1.0)
    assert all(math.isnan(x) for x in auroc_interval(float("nan"), 5, 5))
