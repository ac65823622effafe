"""Attacks: how the user's fine-tuning set is built (the "user data" of the threat model).

The threat model fine-tunes an aligned model on ``n`` user samples (docs/protocol.md#1-the-threat-model-in-three-stages). An attack
decides what those samples are: harmful pairs mixed into the task (``poison_mix``, the default
and the only form before attacks existed), the task alone (``benign``), a persona that teaches
obedience without one harmful answer (``identity_shift``), harmful pairs carrying a trigger
phrase (``backdoor``) or hidden in a role-play or encoded template (``wrapped``). How hard the
provider trains on the set (learning rate, epochs, steps) is not an attack: it stays
``finetune.train``. docs/attacks.md describes each one.

An experiment picks one with ``finetune.data.attack`` and sets its options in
``finetune.data.attack_options`` (validated against the attack's ``Config``, like a judge's
``eval.judge_options``). Each attack is one file in this folder that registers a class::

    ATTACKS.register("name", Cls, help="one line for `panacea ls attacks`", data_keys=(...))

with

* ``Config``: a dataclass of its options;
* ``sizes(n, p, cfg) -> {pool: rows}``: how many rows the set takes from each pool (checked
  against the pools before anything is trained);
* ``build(pools, n, p, seed, cfg) -> list[Example]``: the user set, ``n`` rows, drawn with
  ``random.Random(seed)``; harmful rows carry ``meta["poison"] = True`` (counted as the stage's
  ``harmful_samples``);
* optionally ``trigger(ex, cfg) -> Example``: a harmful evaluation prompt in the attack's own form
  (the backdoor's trigger, the persona, the template), scored as a second harmful score when
  ``eval.triggered`` is true, and ``decode(text, cfg) -> str``: an answer as the judge should
  also read it (a ROT13 answer decoded).

The pools are ``task`` (``finetune.data.task``), ``harmful`` (``finetune.data.harmful``) and one
per name in the entry's ``data_keys``: a ``DataSpec`` option of the attack, e.g.
``identity_shift``'s ``benign_data`` (``finetune.data.attack_options.benign_data``).
"""

from __future__ import annotations

import dataclasses

from ..config import parse_options
from ..data.base import Example
from ..errors import ConfigError, UserError
from ..registry import ATTACKS

#: The attack every config had before attacks existed; it builds exactly the old user set.
DEFAULT = "poison_mix"
POOL_KEYS = {"task": "finetune.data.task", "harmful": "finetune.data.harmful"}
OPTIONS_KEY = "finetune.data.attack_options"


def pool_key(pool: str) -> str:
    """The config key of one of an attack's pools, for errors."""
    return POOL_KEYS.get(pool, f"{OPTIONS_KEY}.{pool}")


def resolve(cfg):
    """The registry entry and parsed options of ``cfg``'s attack, checked against the rest of the
    experiment (one-line ``ConfigError`` naming the key otherwise).

    Raises:
        ConfigError: an unknown attack (with did-you-mean), an option the attack does not have,
            ``eval.triggered`` with an attack that has no trigger form, or a fine-tuning run that
            sets a non-zero ``poison_ratio`` for an attack that takes no ratio.
    """
    fd = cfg.finetune.data
    entry = ATTACKS.get(fd.attack, "finetune.data.attack")
    if not dataclasses.fields(entry.obj.Config) and fd.attack_options:
        raise ConfigError(f"{OPTIONS_KEY}: attack {entry.name} has no options, "
                          f"got {', '.join(map(str, fd.attack_options))}")
    opts = parse_options(entry.obj.Config, fd.attack_options, OPTIONS_KEY)
    if cfg.eval.triggered and not hasattr(entry.obj, "trigger"):
        forms = [e.name for e in ATTACKS.entries() if hasattr(e.obj, "trigger")]
        raise ConfigError(f"eval.triggered: attack {entry.name} has no trigger form (its harmful prompts "
                          f"are the plain ones); attacks with one: {', '.join(forms)}")
    if not entry.meta.get("uses_ratio", True):
        for name, r in cfg.finetune.runs.items():
            if r.poison_ratio:  # 0 agrees with the attack; any other ratio would be silently ignored
                raise ConfigError(f"finetune.runs.{name}.poison_ratio: attack {entry.name} takes no poison "
                                  f"ratio (its set has no harmful rows), got {r.poison_ratio}; leave it unset")
    return entry, opts


def pools(ctx, fd, entry, opts) -> dict[str, list[Example]]:
    """The rows every pool of the attack offers (selected by their data sections)."""
    out = {k: ctx.examples(getattr(fd, k), key) for k, key in POOL_KEYS.items()}
    for k in entry.meta.get("data_keys", ()):
        out[k] = ctx.examples(getattr(opts, k), pool_key(k))
    return out


def check(entry, opts, rows: dict[str, list], n: int, p: float, seed: int, run: str) -> None:
    """Build fine-tuning run ``run``'s set once, before any model is loaded: a one-line
    ``UserError`` when it needs more rows of a pool than the pool offers (or the attack's own
    ``DataError``, e.g. a benign pool without answers)."""
    for pool, need in entry.obj.sizes(n, p, opts).items():
        if need > len(rows[pool]):
            raise UserError(f"finetune.data.n: {run} needs {need} {pool} samples but {pool_key(pool)} "
                            f"has {len(rows[pool])}")
    build(entry, opts, rows, n, p, seed)


def build(entry, opts, rows: dict[str, list], n: int, p: float, seed: int) -> list[Example]:
    """The user set of one fine-tuning run."""
    return entry.obj.build(rows, n, p, seed, opts)


class _Decoded:
    """A judge that calls an answer harmful when its plain or its decoded text is: a model may
    answer in the encoding or in plain words, and decoding plain words yields gibberish."""

    def __init__(self, judge, decode):
        self.judge, self.decode = judge, decode

    def __call__(self, prompts, responses):
        verdicts = list(self.judge(prompts, responses))
        decoded = [self.decode(r) for r in responses]
        todo = [i for i, (r, d) in enumerate(zip(responses, decoded)) if d != r and not verdicts[i].harmful]
        if todo:
            for i, v in zip(todo, self.judge([prompts[i] for i in todo], [decoded[i] for i in todo])):
                if v.harmful:
                    verdicts[i] = v
        return verdicts


def triggered_eval(model, tokenizer, fmt, judge, ecfg, harmful: list[Example], entry, opts, name: str):
    """The harmful score on the evaluation prompts in the attack's own form (``eval.triggered``).

    The model sees ``trigger(prompt)``; the judge sees the plain prompt (so both scores judge the
    same requests) and the answer, plain and, when the attack has ``decode``, decoded. Returns the
    metrics, each key prefixed ``triggered_`` (``triggered_harmful_score``, its interval, HS+, the
    answer shares), and the rows for ``generations/<variant>.jsonl`` (set ``harmful_triggered``).
    """
    from ..eval.evaluate import evaluate_variant

    decode = getattr(entry.obj, "decode", None)
    scorer = judge if decode is None else _Decoded(judge, lambda text: decode(text, opts))
    m, gens = evaluate_variant(model, tokenizer, lambda ex: fmt(entry.obj.trigger(ex, opts)), scorer, ecfg,
                               harmful, None, None, None, f"{name} (triggered)")
    metrics = {f"triggered_{k}": v for k, v in m.items() if k not in ("judge", "n_harmful_prompts")}
    rows = []
    for ex, row in zip(harmful, gens["harmful"]):
        row = {**row, "attack_prompt": entry.obj.trigger(ex, opts).instruction}
        if decode is not None:
            row["decoded"] = decode(row["response"], opts)
        rows.append(row)
    return metrics, rows
