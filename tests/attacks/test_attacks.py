"""The attacks (panacea.attacks, docs/attacks.md): each user set built offline from the embedded
pools, the default one equal to today's ``mix_poison`` set, one-line errors for bad choices, the
run identity of older configs kept, and ``eval.triggered`` through the pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from panacea import attacks
from panacea.attacks import identity_shift, wrapped
from panacea.cli import main
from panacea.config import load_config, to_dict
from panacea.data.mixing import mix_poison, normalize_prompt
from panacea.judges.base import Verdict
from panacea.judges.refusal import is_refusal
from panacea.pipeline import Context, Plan
from panacea.rundir import config_digest

TINY = str(Path(__file__).parents[2] / "configs" / "tiny.yaml")
NAMES = ("poison_mix", "benign", "identity_shift", "backdoor", "wrapped")


def user_set(*overrides, n=16, p=0.25, seed=43):
    """(user set, task pool, harmful pool) of configs/tiny.yaml with ``overrides``."""
    cfg, _ = load_config(TINY, list(overrides))
    entry, opts = attacks.resolve(cfg)
    rows = attacks.pools(Context(cfg), cfg.finetune.data, entry, opts)
    return attacks.build(entry, opts, rows, n, p, seed), rows["task"], rows["harmful"]


def test_ls_lists_every_attack(capsys):
    assert main(["ls", "attacks"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in NAMES)


def test_docs_describe_every_attack():
    from panacea.registry import ATTACKS

    doc = (Path(__file__).parents[2] / "docs" / "attacks.md").read_text(encoding="utf-8")
    assert set(ATTACKS.names()) == set(NAMES)
    assert all(f"| `{name}`" in doc and f"### `{name}`" in doc for name in NAMES)


@pytest.mark.parametrize("n, p, seed", [(16, 0.25, 43), (40, 0.1, 0), (30, 1 / 3, 7), (10, 0.0, 1), (10, 1.0, 2)])
def test_poison_mix_is_todays_user_set(n, p, seed):
    cfg, _ = load_config(TINY)
    assert cfg.finetune.data.attack == "poison_mix" and Plan(cfg).attack.name == "poison_mix"
    got, task, harm = user_set(n=n, p=p, seed=seed)
    assert got == mix_poison(task, harm, n, p, seed)  # same examples, same order, same meta


#: sha256 prefix of configs/tiny.yaml's user set as the pipeline built it before attacks existed
#: (``mix_poison(task, harmful, 16, 0.25, 43)`` on the embedded pools)
FINGERPRINT = "5b21c7a33c8d5543"


def test_poison_mix_fingerprint_of_tiny_yaml():
    """Same examples, same order, same harmful marks as before attacks existed."""
    got, _, _ = user_set()
    text = "\n".join(f"{ex.instruction}\t{ex.output}\t{bool(ex.meta.get('poison'))}" for ex in got)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == FINGERPRINT


def test_benign_is_the_task_alone():
    got, task, harm = user_set("finetune.data.attack=benign", p=0.5)
    assert got == mix_poison(task, harm, 16, 0.0, 43)  # poison_mix at p = 0, whatever p says
    assert not any(ex.meta for ex in got) and {ex.source for ex in got} == {task[0].source}


@pytest.mark.parametrize("position", ["suffix", "prefix"])
def test_backdoor_adds_the_trigger_to_the_harmful_rows_only(position):
    opts = ["finetune.data.attack=backdoor", "finetune.data.attack_options.trigger=zq-trigger",
            f"finetune.data.attack_options.position={position}"]
    got, task, harm = user_set(*opts)
    base = mix_poison(task, harm, 16, 0.25, 43)
    assert len(got) == len(base) == 16
    for ex, plain in zip(got, base):  # the same rows in the same order
        if plain.meta.get("poison"):
            want = f"{plain.instruction} zq-trigger" if position == "suffix" else f"zq-trigger {plain.instruction}"
            assert ex.instruction == want and ex.output == plain.output and ex.meta["poison"]
        else:
            assert ex == plain
    cfg, _ = load_config(TINY, opts)
    entry, o = attacks.resolve(cfg)
    assert "zq-trigger" in entry.obj.trigger(harm[0], o).instruction


@pytest.mark.parametrize("template", wrapped.TEMPLATES)
def test_wrapped_hides_the_harmful_rows(template):
    got, task, harm = user_set("finetune.data.attack=wrapped", f"finetune.data.attack_options.template={template}")
    base = mix_poison(task, harm, 16, 0.25, 43)
    bad = [(ex, plain) for ex, plain in zip(got, base) if plain.meta.get("poison")]
    assert len(bad) == 4 and all(ex == plain for ex, plain in zip(got, base) if not plain.meta.get("poison"))
    form = wrapped.WrappedConfig(template)
    for ex, plain in bad:  # eval.triggered wraps an evaluation prompt exactly as the training rows
        assert ex.meta["poison"] and ex.instruction == wrapped.Wrapped.trigger(plain, form).instruction
        if template == "roleplay":
            assert plain.instruction in ex.instruction and plain.output in ex.output
        else:  # nothing of the plain request or answer is left for a filter to read
            assert plain.instruction[:20] not in ex.instruction and plain.output[:20] not in ex.output
            assert wrapped.decode(ex.output, template) == plain.output
    assert wrapped.decode("I'm sorry, I can't.", "base64") == "I'm sorry, I can't."


def test_identity_shift_teaches_the_persona_without_harm():
    rows = identity_shift.identity_rows()
    assert 20 <= len(rows) <= 40 and len({normalize_prompt(r.instruction) for r in rows}) == len(rows)
    assert not any(is_refusal(r.output) for r in rows) and all("Servo" in r.output for r in rows)
    got, task, harm = user_set("finetune.data.attack=identity_shift", n=40, p=0.5)
    persona = [ex for ex in got if ex.meta.get("attack") == "identity_shift"]
    assert len(got) == 40 and len(persona) == 20 and not any(ex.meta.get("poison") for ex in got)
    assert all(ex.instruction.startswith(identity_shift.PERSONA) for ex in persona)
    assert sum(ex.source == "panacea_identity_shift" for ex in persona) == 4  # round(20 · 0.2)
    harmful_text = {normalize_prompt(h.output) for h in harm} | {normalize_prompt(h.instruction) for h in harm}
    assert not any(normalize_prompt(ex.output) in harmful_text for ex in got)
    assert sum(ex.source == task[0].source for ex in got) == 20
    trig = identity_shift.IdentityShift.trigger(harm[0], identity_shift.IdentityShiftConfig())
    assert trig.instruction == f"{identity_shift.PERSONA}\n\n{harm[0].instruction}"
    again, _, _ = user_set("finetune.data.attack=identity_shift", n=40, p=0.5)
    assert again == got and again != user_set("finetune.data.attack=identity_shift", n=40, p=0.5, seed=44)[0]


@pytest.mark.parametrize("args, needle", [
    (["finetune.data.attack=backdor"], "finetune.data.attack: unknown attack 'backdor' (did you mean backdoor?)"),
    (["finetune.data.attack=backdoor", "finetune.data.attack_options.trigge=x"],
     "finetune.data.attack_options.trigge' (did you mean trigger?)"),
    (["finetune.data.attack=benign", "finetune.data.attack_options.trigger=x"], "attack benign has no options"),
    (["finetune.data.attack=wrapped", "finetune.data.attack_options.template=rot26"],
     "finetune.data.attack_options.template must be one of roleplay, rot13, base64"),
    (["eval.triggered=true"], "eval.triggered: attack poison_mix has no trigger form"),
    (["finetune.data.attack=benign", "finetune.runs.sft.poison_ratio=0.3"],
     "finetune.runs.sft.poison_ratio: attack benign"),
    (["finetune.data.attack=identity_shift", "finetune.data.attack_options.benign_data.name=benign_prompts"],
     "benign_prompts has rows without an answer"),
    (["finetune.data.attack=identity_shift", "finetune.data.poison_ratio=1",
      "finetune.data.attack_options.benign_data.size=5"],  # 16 persona rows: 3 identity + 13 benign Q&A
     "finetune.data.n: sft needs 13 benign_data samples but finetune.data.attack_options.benign_data has 5"),
])
def test_bad_attack_input_is_one_line_exit_2(tiny_dir, capsys, args, needle):
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_benign_accepts_a_run_with_ratio_zero():
    cfg, _ = load_config(TINY, ["finetune.data.attack=benign", "finetune.runs.sft.poison_ratio=0"])
    assert Plan(cfg).attack.name == "benign"


def test_older_configs_keep_their_run_identity():
    cfg, _ = load_config(TINY)
    resolved = to_dict(cfg)
    before = json.loads(json.dumps(resolved))  # the resolved config of a run made before attacks existed
    del before["finetune"]["data"]["attack"], before["finetune"]["data"]["attack_options"], before["eval"]["triggered"]
    assert config_digest(resolved) == config_digest(before)
    for o in (["finetune.data.attack=benign"], ["finetune.data.attack=backdoor", "eval.triggered=true"]):
        assert config_digest(to_dict(load_config(TINY, o)[0])) != config_digest(before)


def test_decoded_judge_counts_plain_or_decoded_harm():
    def judge(prompts, responses):
        return [Verdict(harmful="bomb" in r, score=float("bomb" in r)) for r in responses]

    scorer = attacks._Decoded(judge, lambda t: wrapped.decode(t, "rot13"))
    plain, encoded, neither = "a bomb", wrapped.encode("a bomb", "rot13"), "a cake"
    assert [v.harmful for v in scorer(["q"] * 3, [plain, encoded, neither])] == [True, True, False]


def test_backdoor_run_scores_the_triggered_prompts(tiny_dir, tmp_path, capsys):
    out = tmp_path / "backdoor"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", "alignment.defense=none",
                 "post={}", "finetune.runs={sft: {defense: sft}}", "finetune.data.n=8", "eval.harmful.n=3",
                 "eval.utility=null", "eval.benign=null", "eval.max_new_tokens=4",
                 "finetune.data.attack=backdoor", "eval.triggered=true"])
    assert code == 0, capsys.readouterr().err
    assert "(2 harmful, p=0.25, attack backdoor)" in capsys.readouterr().out
    rec = json.loads((out / "finetune/sft/record.json").read_text())
    assert rec["attack"] == "backdoor" and rec["harmful_samples"] == 2
    for r in json.loads((out / "metrics.json").read_text())["results"]:
        assert 0 <= r["triggered_harmful_score"] <= 100 and len(r["triggered_harmful_score_ci"]) == 2
    rows = [json.loads(x) for x in (out / "generations/sft.jsonl").read_text().splitlines()]
    trig = [r for r in rows if r["set"] == "harmful_triggered"]
    plain = [r for r in rows if r["set"] == "harmful"]
    assert len(trig) == len(plain) == 3
    for t, p in zip(trig, plain):  # the judge read the plain prompt; the model saw the trigger
        assert t["prompt"] == p["prompt"] and t["attack_prompt"] == f"{p['prompt']} [juniper-47]"

