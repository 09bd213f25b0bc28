#!/usr/bin/env bash
# GPU check: everything worth knowing from one CUDA GPU, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh                 # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run       # CPU, every part tiny (what CI can check)
#   OUT=/tmp/check bash benchmarks/gpu_check.sh  # another output folder
#   PARTS="steps bf16" bash benchmarks/gpu_check.sh   # only these parts
#
# Parts, each time-boxed with `timeout` (the boxes add up to 470 s): both paper-smoke profiles
# (their presets say device: auto, so they train on the GPU with cuDNN autotuning, TF32 and
# channels-last, as the README's GPU section describes); the peer benchmark on CUDA (views,
# SimCLR step, BMSSL meta-step by backend, BiSSL upper step / hypergradient); the meta-step
# benchmark on CUDA; steps per second of each paper-preset step type (up to 50 steps each);
# bf16 against fp32 on a short SimCLR run. A part that fails or runs out of time is recorded
# as such and the rest still run. Writes $OUT/gpu_check.json and $OUT/gpu_check.md (default
# OUT: benchmarks/results/gpu_check); each part's log is $OUT/<part>.log. Exits 1 if a part failed.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
OUT="${OUT:-benchmarks/results/gpu_check}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
: > "$OUT/parts.tsv"
FAILED=0

# part NAME SECONDS COMMAND...: run it time-boxed, log to $OUT/NAME.log, record its status.
part() {
    local name="$1" limit="$2"
    shift 2
    if [[ -n "${PARTS:-}" && " $PARTS " != *" $name "* ]]; then return 0; fi
    local start rc=0 state=ok
    start=$(date +%s)
    echo "== $name (at most ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then state=timeout; elif [[ $rc -ne 0 ]]; then state=failed; fi
    if [[ $state != ok ]]; then FAILED=1; tail -n 5 "$OUT/$name.log" || true; fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$rc" "$(( $(date +%s) - start ))" >> "$OUT/parts.tsv"
    echo "   $state (exit $rc)"
}

if [[ $DRY -eq 1 ]]; then
    DEV=cpu
    # The paper-smoke profiles take minutes on a CPU (CI runs them in tests/reproduce); the dry
    # run checks that both commands parse.
    part table1-paper-smoke 60 "$PY" reproduce/table1.py --profile paper-smoke --help
    part bissl-paper-smoke 60 "$PY" reproduce/bissl_table.py --profile paper-smoke --help
    part peers 600 "$PY" -W ignore benchmarks/bench_peers.py --quick --orders second --device $DEV --out "$OUT/peers.json"
    part meta-step 300 "$PY" benchmarks/bench_meta_step.py --quick --inner-steps 1 --device $DEV --out "$OUT/meta_step.json"
    part steps 600 "$PY" benchmarks/gpu_check.py steps --tiny --steps 2 --cap 5 --device $DEV --out "$OUT/steps.json"
    part bf16 120 "$PY" benchmarks/gpu_check.py bf16 --tiny --steps 2 --device $DEV --out "$OUT/bf16.json"
else
    DEV=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: use --dry-run')"
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    part table1-paper-smoke 90 "$PY" reproduce/table1.py --profile paper-smoke --out "$OUT/table1-paper-smoke"
    part bissl-paper-smoke 90 "$PY" reproduce/bissl_table.py --profile paper-smoke --out "$OUT/bissl-paper-smoke"
    part peers 100 "$PY" -W ignore benchmarks/bench_peers.py --device $DEV --repeats 3 --inner-steps 1 --out "$OUT/peers.json"
    part meta-step 50 "$PY" benchmarks/bench_meta_step.py --device $DEV --inner-steps 1 5 --repeats 3 --out "$OUT/meta_step.json"
    part steps 100 "$PY" benchmarks/gpu_check.py steps --steps 50 --cap 3 --device $DEV --out "$OUT/steps.json"
    part bf16 40 "$PY" benchmarks/gpu_check.py bf16 --steps 50 --cap 15 --device $DEV --out "$OUT/bf16.json"
fi

"$PY" benchmarks/gpu_check.py summarize --dir "$OUT"
cat "$OUT/gpu_check.md"
echo "wrote $OUT/gpu_check.json and $OUT/gpu_check.md"
exit $FAILED
