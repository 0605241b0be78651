#!/usr/bin/env bash
# The GPU measurements of pacsim in one call on a machine with CUDA, run from the
# repository root; every output lands in $OUT (default /tmp/pacsim-gpu).
#
#   OUT=/somewhere bash benchmarks/gpu_check.sh [quick]   (at most 580 s: one device call)
#     correctness of the GPU path, fit vs fit_many vs fit(compile=True) throughput (and
#     fit vs fit_many for the suites' FNOs, where neuraloperator is there), and
#     the quick suite's stackable pairs with one cell a task against --batch-cells 64,
#     and its MLP pairs with successive halving against exhaustive selection.
#   OUT=/somewhere bash benchmarks/gpu_check.sh full      (at most 9 minutes)
#     the full suite (665 cells: n = 10, 30, 100, 300, 5 seeds, selection extending any
#     edge choice, the final retrain's lowest-loss epoch kept, PAC's allocate trained
#     until its patience runs out: what full-v4 is to hold)
#     with the defaults on the GPU, 8 jobs, from the datasets in
#     datasets/built/full (bring them along: the diode simulator needs DEVSIM, which a
#     stock PyTorch image lacks). burgers1d and darcy2d use FNOs, which need
#     neuraloperator: where it is missing, the wheels in .whl (made here by
#     `bash benchmarks/gpu_wheels.sh`, brought along) are installed into /tmp/site;
#     without either, the suite runs friedman, pendulum and diode only (385 cells). A run
#     cut off at the limit leaves the cells it finished in $OUT/full/results.jsonl (a
#     rerun resumes; the report marks what is missing).
#   OUT=/somewhere bash benchmarks/gpu_check.sh fno       (at most 9 minutes)
#     only full-v3.toml's darcy2d (140 FNO cells, all the committed CPU run in
#     benchmarks/results/full-v3 lacks: burgers1d's 2D cousin, slower still on a CPU),
#     8 jobs, into $OUT/fno; copy its results.jsonl lines into full-v3's to complete
#     that run (cells record their device). Needs neuraloperator or the wheels in .whl,
#     and the datasets.
#   OUT=/somewhere bash benchmarks/gpu_check.sh seeds     (at most 9 minutes)
#     the seeds full-v3.toml's max_seeds adds to its friedman, pendulum and diode
#     problems (up to 10 where PAC's seed interval against the best baseline holds 1:
#     `pacsim bench benchmarks/suites/full-v3.toml --out benchmarks/results/full-v3
#     --dry-run` lists them), resumed from the committed records, 8 jobs, into
#     $OUT/seeds; copy the new lines of its results.jsonl into full-v3's. Needs the
#     datasets.
#   OUT=/somewhere bash benchmarks/gpu_check.sh width     (at most 9 minutes)
#     where PAC pays: benchmarks/pac_width.py (PAC against the best baseline, MLP hidden
#     32-1024 on friedman and pendulum, FNO channels on burgers1d where neuraloperator
#     is there, n = 10 and 100, 5 seeds, full protocol), 8 jobs, from datasets/built/full;
#     cut off at the limit, a rerun resumes each width and --report-only tabulates.
set -u
MODE=${1:-quick}
OUT=${OUT:-/tmp/pacsim-gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import neuralop" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    # the carried wheels of benchmarks/gpu_wheels.sh, for the FNO pairs
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/wheels.txt" 2>&1 &&
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    echo "wheels from .whl: exit $?" | tee -a "$OUT/steps.txt"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
}
case "$MODE" in
quick)
    step smoke 90 $PY benchmarks/gpu_smoke.py --device cuda
    step throughput 150 $PY benchmarks/throughput.py --device cuda --threads 16 \
        --ks 1 8 32 64 --repeats 2 --compile --models mlp cnn
    step throughput_fno 60 $PY benchmarks/throughput.py --device cuda --threads 16 \
        --ks 1 8 32 64 --repeats 2 --models fno1d fno2d
    step quick 180 $PY benchmarks/batch_cells.py benchmarks/suites/quick.toml \
        --work /tmp/pacsim-quick --ks 1 64 --device cuda --pairs friedman diode burgers1d \
        --json "$OUT/quick_cuda.json"
    step halving 100 $PY benchmarks/halving.py benchmarks/suites/quick.toml \
        --work /tmp/pacsim-halving --pairs friedman pendulum diode --device cuda \
        --json "$OUT/halving_cuda.json"
    ;;
full)
    if [ ! -f datasets/built/full/darcy2d_source.h5 ]; then
        echo "datasets/built/full is missing: build it (pacsim datasets) or bring it along" \
            | tee -a "$OUT/steps.txt"
        exit 2
    fi
    SUITE=benchmarks/suites/full.toml
    if ! $PY -c "import neuralop" >/dev/null 2>&1; then  # the FNO pairs need it
        mkdir -p /tmp/pacsim-sub
        SUITE=$($PY -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from batch_cells import _subset
print(_subset(Path('$SUITE'), ['friedman', 'pendulum', 'diode'],
              Path('/tmp/pacsim-sub')))")
        echo "no neuraloperator: the full suite without its FNO pairs ($SUITE)" \
            | tee -a "$OUT/steps.txt"
    fi
    step full 540 $PY -m pacsim bench "$SUITE" --out "$OUT/full" --jobs 8 --report
    rm -rf "$OUT/full/cache" "$OUT/full/predictions" "$OUT/full/figures"
    ;;
fno)
    if ! $PY -c "import neuralop" >/dev/null 2>&1 || \
            [ ! -f datasets/built/full/darcy2d_source.h5 ]; then
        echo "fno mode needs neuraloperator (or .whl) and datasets/built/full" \
            | tee -a "$OUT/steps.txt"
        exit 2
    fi
    mkdir -p /tmp/pacsim-sub
    SUITE=$($PY -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from batch_cells import _subset
print(_subset(Path('benchmarks/suites/full-v3.toml'), ['darcy2d'],
              Path('/tmp/pacsim-sub')))")
    step fno 540 $PY -m pacsim bench "$SUITE" --out "$OUT/fno" --jobs 8 --report
    rm -rf "$OUT/fno/cache" "$OUT/fno/predictions" "$OUT/fno/figures"
    ;;
seeds)
    if [ ! -f datasets/built/full/diode_source.h5 ]; then
        echo "seeds mode needs datasets/built/full" | tee -a "$OUT/steps.txt"
        exit 2
    fi
    mkdir -p /tmp/pacsim-sub "$OUT/seeds"
    SUITE=$($PY -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from batch_cells import _subset
print(_subset(Path('benchmarks/suites/full-v3.toml'), ['friedman', 'pendulum', 'diode'],
              Path('/tmp/pacsim-sub')))")
    # the committed cells: the runner sees the suite's seeds done and adds the others
    [ -f "$OUT/seeds/results.jsonl" ] || \
        cp benchmarks/results/full-v3/results.jsonl "$OUT/seeds/results.jsonl"
    step seeds 540 $PY -m pacsim bench "$SUITE" --out "$OUT/seeds" --jobs 8
    rm -rf "$OUT/seeds/cache" "$OUT/seeds/predictions" "$OUT/seeds/figures"
    ;;
width)
    PAIRS="friedman pendulum"
    $PY -c "import neuralop" >/dev/null 2>&1 && PAIRS="$PAIRS burgers1d"
    step width 540 $PY benchmarks/pac_width.py --work "$OUT/width" --pairs $PAIRS \
        --jobs 8 --device cuda
    $PY benchmarks/pac_width.py --work "$OUT/width" --pairs $PAIRS --report-only \
        >"$OUT/width_table.txt" 2>&1
    rm -rf "$OUT"/width/w*/cache "$OUT"/width/w*/predictions
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh [quick|full|fno|seeds|width]" >&2
    exit 2
    ;;
esac
tail -n 20 "$OUT"/*.txt
