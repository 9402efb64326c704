#!/usr/bin/env bash
# The GPU checks as one command, for a session with an H100/H200 (about 12 minutes at most).
#
#   kernels/attention/gpu_check.sh OUTDIR             # on the GPU machine, from the repository root
#   kernels/attention/gpu_check.sh --dry-run OUTDIR   # any machine: every step in its CPU form
#
# Steps, each under its own timeout (seconds; override with the variables named), each logging to
# OUTDIR/<step>.log; a step that fails or times out does not stop the ones after it:
#   attention (ATTENTION_TIMEOUT=200)  cinescene bench attention --iters 5 --out OUTDIR/attention.json (+ .md)
#                                      dry run: cinescene bench attention --check (interpreter sweep + sm_90 compile)
#   packed    (PACKED_TIMEOUT=80)      cinescene bench attention --packed --iters 5 --out OUTDIR/attention_packed.json
#                                      (samples of 20 and 5 scene images: packed varlen vs padded vs per sample);
#                                      dry run: none (its toy-size CPU run is a test)
#   sampling  (SAMPLING_TIMEOUT=150)   cinescene bench sampling configs/model/wan1.3b.yaml --steps 6
#                                      --out OUTDIR/sampling_wan1.3b.json (bf16; the cache's overrides are applied)
#                                      dry run: the same config --dry-run (plan only) and the tiny smoke model for real
#   step      (STEP_TIMEOUT=180)       cinescene bench step configs/experiments/cinescene_wan1.3b.yaml --nproc 1
#                                      --warmup 1 --steps 2 --out OUTDIR/bench_step (the recipe's training step: time,
#                                      MFU, peak memory against cinescene plan's); dry run: the tiny smoke model on a CPU,
#                                      one timed step (STEP_TIMEOUT=300: a CPU's DeepSpeed start is slow)
#   pytest    (PYTEST_TIMEOUT=120)     pytest -m gpu tests/kernels tests/sampling (bf16 at real sizes, inductor,
#                                      cached sampling through the fused kernel); dry run: the same (all skip on a CPU)
# The benchmark JSON is rewritten after every shape, so a timed-out attention step keeps the rows it finished.
# Exit status: 0 when every step passed, 1 otherwise; OUTDIR/summary.txt lists each step's status and seconds.
set -u

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [--dry-run] OUTDIR" >&2
    exit 2
fi
out=$1
mkdir -p "$out" || exit 2
python=${PYTHON:-python}
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
failed=0
: > "$out/summary.txt"

step() {  # step NAME TIMEOUT COMMAND...: run with a timeout, log, record the status
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS status
    echo "== $name (timeout ${limit}s): $*" | tee -a "$out/summary.txt"
    timeout -k 10 -s INT "$limit" "$@" > "$out/$name.log" 2>&1
    status=$?
    tail -n 25 "$out/$name.log"
    if [ "$status" -eq 0 ]; then
        echo "== $name: ok in $((SECONDS - began)) s" | tee -a "$out/summary.txt"
    else
        [ "$status" -eq 124 ] && status="$status (timed out)"
        echo "== $name: FAILED, status $status after $((SECONDS - began)) s" | tee -a "$out/summary.txt"
        failed=1
    fi
}

if [ "$dry_run" -eq 1 ]; then
    step attention "${ATTENTION_TIMEOUT:-200}" "$python" -m cinescene bench attention --check \
        --out "$out/attention_check.json"
    step sampling "${SAMPLING_TIMEOUT:-150}" "$python" -m cinescene bench sampling configs/model/wan1.3b.yaml \
        --dtype bf16 --steps 6 --dry-run
    step sampling_smoke "${SAMPLING_TIMEOUT:-150}" "$python" -m cinescene bench sampling \
        configs/experiments/smoke.yaml --steps 4 --out "$out/sampling_smoke.json"
    step step "${STEP_TIMEOUT:-300}" "$python" -m cinescene bench step configs/experiments/smoke.yaml --nproc 1 \
        --warmup 1 --steps 1 --out "$out/bench_step"
else
    step attention "${ATTENTION_TIMEOUT:-200}" "$python" -m cinescene bench attention --iters 5 \
        --out "$out/attention.json"
    step packed "${PACKED_TIMEOUT:-80}" "$python" -m cinescene bench attention --packed --iters 5 \
        --out "$out/attention_packed.json"
    step sampling "${SAMPLING_TIMEOUT:-150}" "$python" -m cinescene bench sampling configs/model/wan1.3b.yaml \
        --steps 6 --out "$out/sampling_wan1.3b.json"
    step step "${STEP_TIMEOUT:-180}" "$python" -m cinescene bench step configs/experiments/cinescene_wan1.3b.yaml \
        --nproc 1 --warmup 1 --steps 2 --out "$out/bench_step"
fi
step pytest "${PYTEST_TIMEOUT:-120}" "$python" -m pytest -m gpu tests/kernels tests/sampling -q -p no:cacheprovider \
    --junitxml "$out/pytest_gpu.xml"
exit "$failed"
