#!/usr/bin/env bash
# Every result under results/, from scratch, in the order the numbers depend on each other:
#   1. the searches on validation prompts (they choose the values configs/demo.yaml reports with);
#   2. the reported experiments on test prompts, three training seeds each, two seeds at a time
#      (separate processes, one torch thread each, joined by `panacea record`);
#   3. docs/results.md and the README's result blocks, generated from results/.
# Usage:  bash bench/results.sh [STEP ...]     STEP: search demo booster baselines why_average tables
#         (default: all, in that order). Each run resumes where it stopped; a finished step is
#         recorded again only with --force (`panacea record` refuses to replace a result otherwise).
# Time on 2 CPU cores: searches ≈ 1 h, demo ≈ 1.5 h, booster ≈ 3 h, baselines ≈ 2.5 h, why_average ≈ 2.5 h.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PANACEA:-.venv/bin/panacea}
export HF_HUB_OFFLINE=1 PANACEA_THREADS=${PANACEA_THREADS:-1}
SEEDS=(43 44 45)
FORCE=()
steps=()
for a in "$@"; do [ "$a" = --force ] && FORCE=(--force) || steps+=("$a"); done
[ ${#steps[@]} -gt 0 ] || steps=(search demo booster baselines why_average tables)

# run CONFIG NAME: one process per seed, two at a time, then record them as results/NAME
seeds() {
  local config=$1 name=$2 pids=() dirs=()
  for s in "${SEEDS[@]}"; do
    dirs+=("runs/${name}_s$s")
    "$P" run "$config" seed="$s" output_dir="runs/${name}_s$s" > "runs/${name}_s$s.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
  "$P" record "${dirs[@]}" "results/$name" "${FORCE[@]}" \
    --command "for s in ${SEEDS[*]}; do panacea run $config seed=\$s output_dir=runs/${name}_s\$s; done"
}

mkdir -p runs
for step in "${steps[@]}"; do
  case $step in
    search)
      for c in demo_panacea demo_others; do
        "$P" run "configs/search/$c.yaml" output_dir="runs/search_$c" > "runs/search_$c.log" 2>&1 &
      done
      wait
      for c in demo_panacea demo_others; do
        "$P" record "runs/search_$c" "results/search_$c" "${FORCE[@]}" --command "panacea run configs/search/$c.yaml"
      done ;;
    demo) seeds configs/demo.yaml demo ;;
    booster) seeds configs/booster.yaml booster ;;
    baselines) seeds configs/baselines.yaml baselines ;;
    why_average)
      "$P" run configs/analysis/why_average.yaml output_dir=runs/why_average
      "$P" record runs/why_average results/why_average "${FORCE[@]}" --command "panacea run configs/analysis/why_average.yaml" ;;
    tables) "$P" tables results --write docs/results.md --readme README.md ;;
    *) echo "unknown step $step (search demo booster baselines why_average tables)" >&2; exit 2 ;;
  esac
done
