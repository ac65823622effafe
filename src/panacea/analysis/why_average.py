"""Why the averaged ε works: the factor table and its one-sentence conclusion for a recorded
``configs/analysis/why_average.yaml`` result (issue "Results people can cite", item 3).

``panacea_avg`` (beyond the paper) outputs the mean of several steps' ε, rescaled to ρ; the paper's
``panacea`` outputs the last step's ε alone. Two things differ between them, and the study varies
one at a time on the same data, model and ρ:

* how many harmful samples lie behind the output ε: the last step's ε from a harmful batch of
  4, 10, 40 or 80 (``last@batchN``);
* where on the trajectory the averaged ε come from, at a fixed number of draws: the first k steps,
  the last k, or all (``avg@first10``, ``avg@last10``, ``avg@all20``; harmful batch 10).

Everything here is read from the recorded files (config, ``metrics.json`` records and each judge's
scores); nothing is typed. "Differs" means the two variants' 95 % intervals do not overlap:
per-prompt Wilson intervals with one training seed, Student-t intervals over the seeds with more.
The conclusion is stated under the package's default judge (``learned``) when the answers were
re-scored by it, else under the judge the run recorded.
"""

from __future__ import annotations

#: the judge the conclusion is stated under when the answers were re-scored by it (the package's
#: default judge, validated on human labels: docs/judge.md)
PRIMARY_JUDGE = "learned"


def _runs(cfg: dict) -> dict:
    return (cfg.get("finetune") or {}).get("runs") or {}


def _records(res: dict) -> dict[str, dict]:
    """variant → its stage record (``metrics.json`` ``records``) of the first seed."""
    return next(iter(res["records"].values()), {})


def batch_sizes(pool: int, batch: int, steps: range) -> list[int]:
    """The harmful batch drawn at each ε-step in ``steps`` (0-based) from a defender's set of
    ``pool`` samples, as the single-process ``CyclingLoader`` draws them: each pass over the
    shuffled set gives ⌊pool/batch⌋ full batches and then the rest, if any, as a smaller batch."""
    full, rest = divmod(pool, batch)
    per_pass = _per_pass(pool, batch)
    return [batch if i % per_pass < full else rest for i in steps]


def _per_pass(pool: int, batch: int) -> int:
    """Batches per pass over the set: the full ones and the smaller rest, if any."""
    return -(-pool // batch)


def _distinct(pool: int, batch: int, steps: range) -> str:
    """Distinct samples among the draws of ``steps``: every draw within one pass is distinct; a
    window that holds a whole pass has seen the whole set; otherwise at most min(draws, pool)."""
    per_pass = _per_pass(pool, batch)
    draws = sum(batch_sizes(pool, batch, steps))
    if not steps or steps[0] // per_pass == steps[-1] // per_pass:
        return str(draws)
    first_whole = -(-steps[0] // per_pass) * per_pass  # the first pass that starts inside the window
    if first_whole + per_pass <= steps[-1] + 1:
        return str(pool)
    return f"≤ {min(draws, pool)}"


def describe(opts: dict, record: dict) -> tuple[str, int | None, str | None] | None:
    """(which ε, harmful draws behind it, distinct harmful samples) of one fine-tuning run's options
    and stage record; None for a run without ε (``sft``). The draws are counted batch by batch
    (:func:`batch_sizes`): a harmful batch that does not divide the defender's set leaves a smaller
    batch at the end of each pass, and the ε of such a step rests on fewer samples."""
    defense = opts.get("defense", "sft")
    if defense not in ("panacea", "panacea_avg"):
        return None
    batch = opts.get("harmful_batch_size")
    pool = (opts.get("harmful_data") or {}).get("n")
    steps = record.get("epsilon_steps")
    if defense == "panacea":
        which, window = "the last step's", None if steps is None else range(steps - 1, steps)
    else:
        kept = record.get("epsilon_averaged_steps")
        mode = opts.get("average", "last")
        if steps is None or kept is None:
            which, window = "mean of several steps", None
        elif mode == "all":
            which, window = f"mean of every step (1–{steps})", range(steps)
        elif mode == "first":
            which, window = f"mean of steps 1–{kept}", range(kept)
        else:
            which, window = f"mean of steps {steps - kept + 1}–{steps}", range(steps - kept, steps)
    if window is None or batch is None or pool is None:
        return which, None, None
    return which, sum(batch_sizes(pool, batch, window)), _distinct(pool, batch, window)


def _interval(res: dict, name: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of a variant's HS: its Wilson interval with one seed, else mean ± t."""
    row = next((r for r in res["summary"] if r["name"] == name), None)
    if row is None or "harmful_score" not in row["metrics"]:
        return None
    m = row["metrics"]["harmful_score"]
    if len(row["seeds"]) == 1:
        one = next(r for r in res["per_seed"][row["seeds"][0]] if r["name"] == name)
        lo, hi = one.get("harmful_score_ci") or (m["mean"], m["mean"])
        return m["mean"], lo, hi
    half = m.get("ci95") or 0.0
    return m["mean"], m["mean"] - half, m["mean"] + half


def _cell(iv: tuple[float, float, float] | None) -> str:
    return "—" if iv is None else f"{iv[0]:.1f} ({iv[1]:.0f}–{iv[2]:.0f})"


def _cmp(a: tuple[float, float, float], b: tuple[float, float, float]) -> int:
    """−1 when a's interval lies wholly below b's, +1 wholly above, 0 when they overlap."""
    return -1 if a[2] < b[1] else 1 if a[1] > b[2] else 0


def _mean_share(res: dict, names: list[str], key: str) -> float | None:
    """Mean over ``names`` of a variant metric's mean (None when any lacks it)."""
    by = {r["name"]: r["metrics"] for r in res["summary"]}
    vals = [(by.get(n, {}).get(key) or {}).get("mean") for n in names]
    return None if not vals or None in vals else sum(vals) / len(vals)


def findings(res: dict) -> str:
    """The conclusion's body (what each factor does, and the verdict), from ``res``'s scores."""
    cfg, records = res["config"], _records(res)
    info = {n: describe(o, records.get(n) or {}) for n, o in _runs(cfg).items()}
    last = sorted((d[1], n) for n, d in info.items()
                  if d and d[0] == "the last step's" and d[1] is not None and _interval(res, n))
    avg = {(o.get("average", "last")): n for n, o in _runs(cfg).items()
           if o.get("defense") == "panacea_avg" and _interval(res, n)}
    if len(last) < 2 or not {"first", "last"} <= set(avg):
        return "the recorded result lacks the runs the conclusion compares (two last-step batches, avg first and last)."
    (b_lo, n_lo), (b_hi, n_hi) = last[0], last[-1]
    small, big = _interval(res, n_lo), _interval(res, n_hi)
    first, late = _interval(res, avg["first"]), _interval(res, avg["last"])
    s = _cmp(big, small)
    every = (", ".join(f"{_interval(res, n)[0]:.1f}" for _, n in last) + " at batches "
             + ", ".join(str(b) for b, _ in last))
    samples = (f"more harmful samples behind the last step's ε {'lower' if s < 0 else 'raise'} HS from batch "
               f"{b_lo} to batch {b_hi} ({every})" if s else
               f"the number of harmful samples behind the last step's ε does not move HS beyond the intervals "
               f"from batch {b_lo} to batch {b_hi} ({every})")
    w = _cmp(first, late)
    window = (f"where on the trajectory the averaged ε come from does not ({first[0]:.1f} from the first "
              f"steps, {late[0]:.1f} from the last)" if not w else
              f"where on the trajectory the averaged ε come from does ({first[0]:.1f} from the first steps, "
              f"{late[0]:.1f} from the last)")
    draws_late = info[avg["last"]][1]
    a = _cmp(late, big)
    versus = (f"and the average over {draws_late} draws is {'below' if a < 0 else 'above'} the last step's ε "
              f"from {b_hi} ({late[0]:.1f} vs {big[0]:.1f})" if a else
              f"and the average over {draws_late} draws matches the last step's ε from {b_hi} within the "
              f"intervals ({late[0]:.1f} vs {big[0]:.1f})")
    if w:
        verdict = ("where on the trajectory the ε come from matters" + (
            ", and averaging over steps beats the samples of one step" if a < 0 else ""))
    elif s < 0:
        verdict = ("more samples help, and averaging over steps helps beyond them; where on the trajectory the "
                   "steps lie does not matter" if a < 0 else
                   "consistent with the average working through the number of harmful samples behind it, not "
                   "through where on the trajectory they come from")
    else:
        verdict = ("consistent with the average working by averaging over steps, not through the number of "
                   "samples in one step" if a < 0 else "neither factor separates from the intervals")
    broken = {k: _mean_share(res, names, "share_degenerate") for k, names in
              (("avg", list(avg.values())), ("last", [n for _, n in last]))}
    if None not in broken.values():
        verdict += (f" (broken answers to the harmful prompts: {broken['avg']:.1f} % on average with an averaged ε, "
                    f"{broken['last']:.1f} % with a last step's)")
    return f"{samples}; {window}; {versus}: {verdict}."


def conclusion(res: dict, judge: str) -> str:
    """The one sentence, from ``res`` scored by ``judge``."""
    n = len(res["meta"]["seeds"])
    scope = "one training seed, per-prompt intervals" if n == 1 else f"{n} seeds, intervals over the seeds"
    return f"Under `{judge}` ({scope}): {findings(res)}"


def section(res: dict, again: dict[str, dict]) -> list[str]:
    """The factor table (HS under the recorded judge and every re-scoring judge) and the conclusion."""
    cfg, records = res["config"], _records(res)
    recorded = (res["meta"].get("eval") or {}).get("judge") or "harm"
    loaded = {recorded: res, **again}
    judges = list(loaded)
    head = ["variant", "output ε", "harmful draws behind ε", "distinct harmful samples"] + [
        f"HS `{j}` (95 %)" for j in judges] + ["degenerate", "FA"]
    lines = ["", "Why the averaged ε works, one factor at a time (same data, model and ρ; "
             "HS with its 95 % interval; degenerate: % of harmful prompts answered with broken output "
             f"(repetition, too few words, symbols; `{recorded}`, docs/protocol.md#degenerate-answers)):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in res["summary"]:
        name = row["name"]
        opts = _runs(cfg).get(name)
        if opts is None:
            continue
        d = describe(opts, records.get(name) or {})
        which, draws, distinct = d if d else ("none (no defense)", None, None)
        fa = (row["metrics"].get("finetune_accuracy") or {}).get("mean")
        degenerate = (row["metrics"].get("share_degenerate") or {}).get("mean")
        lines.append("| " + " | ".join(
            [name, which, "—" if draws is None else str(draws), distinct or "—"]
            + [_cell(_interval(loaded[j], name)) for j in judges]
            + ["—" if x is None else f"{x:.1f}" for x in (degenerate, fa)]) + " |")
    primary = PRIMARY_JUDGE if PRIMARY_JUDGE in loaded else recorded
    lines += ["", "**Conclusion.** " + conclusion(loaded[primary], primary)]
    for j in judges:
        if j != primary:
            lines.append(f"* under `{j}`: {findings(loaded[j])}")
    return lines
