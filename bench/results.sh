#!/usr/bin/env bash
# Every result under results/, from scratch, in the order the numbers depend on each other:
#   1. the searches on validation prompts (they choose the values configs/demo.yaml reports with);
#   2. the reported experiments on test prompts, three training seeds each;
#   3. docs/results.md and the README's result blocks, generated from results/.
# All runs of the requested steps go into one queue served two at a time (separate processes, one
# torch thread each, so a 2-core machine stays busy); each step is recorded (`panacea record`) as
# soon as its last run ends. The searches run before anything else because the other configs use
# the values they chose.
# Usage:  bash bench/results.sh [STEP ...] [--force]
#         STEP: search demo booster baselines why_average tables (default: all, in that order).
#         Each run resumes where it stopped; a finished step is recorded again only with --force
#         (`panacea record` refuses to replace a result otherwise). JOBS=1 runs one at a time.
# Time on 2 CPU cores: searches ≈ 1 h, demo ≈ 1.5 h, booster ≈ 3 h, baselines ≈ 2.5 h, why_average ≈ 2.5 h.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PANACEA:-.venv/bin/panacea}
export HF_HUB_OFFLINE=1 PANACEA_THREADS=${PANACEA_THREADS:-1}
JOBS=${JOBS:-2}
SEEDS=(43 44 45)
FORCE=()
steps=()
for a in "$@"; do [ "$a" = --force ] && FORCE=(--force) || steps+=("$a"); done
[ ${#steps[@]} -gt 0 ] || steps=(search demo booster baselines why_average tables)

# one line per run: STEP CONFIG RUN_DIR [KEY=VALUE ...]; one line per step: its record command
declare -a runs=() records=()
add_seeds() {  # STEP CONFIG NAME
  local dirs=()
  for s in "${SEEDS[@]}"; do runs+=("$1 $2 runs/${3}_s$s seed=$s"); dirs+=("runs/${3}_s$s"); done
  records+=("$1|${dirs[*]}|results/$3|for s in ${SEEDS[*]}; do panacea run $2 seed=\$s output_dir=runs/${3}_s\$s; done")
}
add_one() {  # STEP CONFIG NAME
  runs+=("$1 $2 runs/$3")
  records+=("$1|runs/$3|results/$3|panacea run $2 output_dir=runs/$3")
}
for step in "${steps[@]}"; do
  case $step in
    search) add_one search configs/search/demo_panacea.yaml search_demo_panacea
            add_one search configs/search/demo_others.yaml search_demo_others ;;
    demo) add_seeds demo configs/demo.yaml demo ;;
    booster) add_seeds booster configs/booster.yaml booster ;;
    baselines) add_seeds baselines configs/baselines.yaml baselines ;;
    why_average) add_one why_average configs/analysis/why_average.yaml why_average ;;
    tables) ;;
    *) echo "unknown step $step (search demo booster baselines why_average tables)" >&2; exit 2 ;;
  esac
done

mkdir -p runs
declare -A left=()   # runs still to finish, per step
for r in "${runs[@]}"; do set -- $r; left[$1]=$(( ${left[$1]:-0} + 1 )); done
record_if_done() {  # STEP
  [ "${left[$1]}" -eq 0 ] || return 0
  for rec in "${records[@]}"; do
    IFS='|' read -r step dirs out cmd <<< "$rec"
    # shellcheck disable=SC2086
    [ "$step" = "$1" ] && "$P" record $dirs "$out" "${FORCE[@]}" --command "$cmd"
  done
  return 0
}
declare -A step_of=()
start() {  # STEP CONFIG RUN_DIR [OVERRIDES]
  local step=$1 config=$2 dir=$3; shift 3
  echo "$(date -u +%H:%M:%S) start $dir ($config $*)"
  "$P" run "$config" "$@" output_dir="$dir" > "$dir.log" 2>&1 &
  step_of[$!]=$step
}
finish_one() {
  local pid
  wait -n -p pid || { echo "a run failed (pid $pid, step ${step_of[$pid]}): see its runs/*.log" >&2; exit 1; }
  local step=${step_of[$pid]}; unset "step_of[$pid]"
  left[$step]=$(( left[$step] - 1 ))
  echo "$(date -u +%H:%M:%S) done one run of $step (${left[$step]} left)"
  record_if_done "$step"
}
for r in "${runs[@]}"; do
  set -- $r
  # the searches choose values the other steps use: let them finish first
  if [ "$1" != search ] && [ "${left[search]:-0}" -gt 0 ]; then while [ ${#step_of[@]} -gt 0 ]; do finish_one; done; fi
  while [ ${#step_of[@]} -ge "$JOBS" ]; do finish_one; done
  start "$@"
done
while [ ${#step_of[@]} -gt 0 ]; do finish_one; done
for step in "${steps[@]}"; do
  [ "$step" = tables ] && "$P" tables results --write docs/results.md --readme README.md
done
exit 0
