#!/bin/bash
# Runs the commands whose printed metrics and run files a refactor must leave byte-identical,
# with keras_llm imported from SRC, writing logs and run directories under OUT.
#
#   git worktree add /tmp/before <commit>            # the code before the change
#   tools/same_behaviour.sh /tmp/before /tmp/A
#   tools/same_behaviour.sh "$PWD" /tmp/B
#   python tools/compare_runs.py /tmp/A /tmp/B       # exits 1 on any difference
#
# About 20 minutes on 2 AMX cores. Compare runs made on the same machine, one after the
# other: timings are masked by compare_runs.py, everything else must match.
set -u
SRC=$(cd "${1:?usage: same_behaviour.sh SRC OUT}" && pwd)
OUT=${2:?usage: same_behaviour.sh SRC OUT}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
export PYTHONPATH=$SRC
cd "$SRC" || exit 1
run() {
    local name=$1; shift
    echo "== $name $(date +%T)"
    "$PY" -m keras_llm "$@" > "$OUT/$name.log" 2> "$OUT/$name.err"
    echo "rc=$?"
}
run qsq quickstart --quick --run-dir "$OUT/qsq"
run dc digits classify "$OUT/dc"
run dcap digits caption --quick "$OUT/dcap"
run sp study speakers --pretrained "$OUT/qsq/pretrain" --seeds 0 --run-dir "$OUT/sp"
run spq study speakers --pretrained "$OUT/qsq/pretrain" --quick --run-dir "$OUT/spq"
run dlg dialogue finetune --pretrained "$OUT/qsq/pretrain" --epochs 1 --samples 2 \
    --run-dir "$OUT/dlg"
run trq study transfer --quick --run-dir "$OUT/trq"
# Two fine-tuning phases (head alone, then everything) and a tiny pretraining.
echo '{"train": {"freeze_backbone_epochs": 1, "finetune_epochs": 2,
      "finetune_steps_per_epoch": 20}}' > "$OUT/two_phase.json"
run ft2 finetune --pretrained "$OUT/qsq/pretrain" --train-preset quick \
    --config "$OUT/two_phase.json" --run-dir "$OUT/ft2"
run ptt pretrain --preset tiny --train-preset tiny --run-dir "$OUT/ptt"
