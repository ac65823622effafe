"""Mean ± 95 % interval over seeds, per variant and numeric metric."""

import pytest

from panacea.eval.stats import summarize


def row(name, **kw):
    return {"name": name, "harmful_score_ci": [0, 1], "judge": {"judge": "harm"}, "samples": [], **kw}


def test_summarize_by_hand():
    per_seed = {
        1: [row("aligned", harmful_score=10.0, finetune_accuracy=80.0, n_harmful_prompts=6, ok=True),
            row("sft", harmful_score=50.0)],
        2: [row("aligned", harmful_score=20.0, finetune_accuracy=float("nan"), n_harmful_prompts=6),
            row("sft", harmful_score=50.0)],
        3: [row("aligned", harmful_score=30.0, finetune_accuracy=90.0, n_harmful_prompts=6),
            row("sft", harmful_score=50.0)],
    }
    out = summarize(per_seed)
    assert [r["name"] for r in out] == ["aligned", "sft"] and out[0]["seeds"] == [1, 2, 3]
    hs = out[0]["metrics"]["harmful_score"]
    # mean 20, s = 10, t(0.975, 2) = 4.303 → 4.303 · 10 / √3 = 24.8434
    assert hs["mean"] == 20.0 and hs["ci95"] == pytest.approx(24.8434, abs=1e-3)
    assert hs["lo"] == pytest.approx(20 - 24.8434, abs=1e-3) and hs["values"] == [10.0, 20.0, 30.0]
    fa = out[0]["metrics"]["finetune_accuracy"]  # nan in one seed: summarised over the other two
    # 80, 90: s = √50, half-width = t(0.975, 1) · √50 / √2 = 12.706 · 5
    assert fa["n"] == 2 and fa["mean"] == 85.0 and fa["ci95"] == pytest.approx(12.706 * 5, abs=1e-2)
    assert out[0]["metrics"]["n_harmful_prompts"]["ci95"] == 0.0
    for skipped in ("ok", "harmful_score_ci", "judge", "samples", "name"):
        assert skipped not in out[0]["metrics"]
    assert out[1]["metrics"]["harmful_score"]["ci95"] == 0.0


def test_one_seed_has_no_interval():
    out = summarize({7: [row("sft", harmful_score=40.0)]})
    m = out[0]["metrics"]["harmful_score"]
    assert m["mean"] == 40.0 and m["ci95"] is None and m["lo"] is None and m["n"] == 1
