"""The printed results table: the engaged-but-harmless column appears only when a judge fills it."""

from panacea.report import format_results


def _row(name, harmless):
    return {"name": name, "harmful_score": 40.0, "harmful_score_ci": [30.0, 50.0], "share_refused": 20.0,
            "share_engaged": 40.0, "share_engaged_harmless": harmless, "share_off_topic": 0.0,
            "share_degenerate": 40.0 - harmless, "finetune_accuracy": 90.0, "over_refusal": 5.0}


def test_engaged_harmless_column_only_when_the_judge_fills_it():
    two = format_results({"name": "r", "results": [_row("sft", 0.0), _row("panacea", 25.0)]}, samples=False)
    head, rule, sft, pan = two.splitlines()[1:5]
    assert "harmless" in head
    assert pan.split()[6] == "25.0" and sft.split()[6] == "0.0"   # after variant, HS, [CI], HS+, refused, engaged
    one = format_results({"name": "r", "results": [_row("sft", 0.0)]}, samples=False)
    assert "harmless" not in one and len(one.splitlines()[1].split()) == len(head.split()) - 1
