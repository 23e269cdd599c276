#!/usr/bin/env bash
# The one prepared device check of issue 6 (Triton kernels), for a session that has the GPU:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
# Stages, each under its own `timeout` (seconds, overridable through the environment):
#   env      nvidia-smi, torch / CUDA / triton versions
#   tests    pytest on the tests whose names contain "triton" or "cuda"   (TESTS_S=200)
#   verify   python -m verify --quick --device cuda                       (VERIFY_S=80)
#   report   benchmarks/report_gpu.py, its budget REPORT_S - 50 s         (REPORT_S=180)
#   sweep    report_gpu.py --sweep: launch variants of the Triton kernels,
#            each checked against the default launch; budget SWEEP_S - 25 s (SWEEP_S=90)
# 200 + 80 + 180 + 90 = 550 s, plus the env stage, stays under 570 s (the device tool allows
# 600 s per command); the sweep's 90 s came out of tests (240), verify (90) and report (240, whose
# budget drops the last, largest routing cases). STAGES picks stages (e.g. STAGES="sweep" for a
# rerun); arguments go to report_gpu.py in both the report and the sweep stage (e.g. --repeats 5;
# the sweep ignores the report's grid options). Everything is logged to $OUT/gpu_check.log;
# verify.json, gpu_report.{json,md} and gpu_sweep.{json,md} go to $OUT too (6 files: the tool
# returns at most 8). A failing stage does not stop the next; the exit status is 1 if any stage
# failed (pytest's 5, "no tests collected", counts as failed; the sweep fails on a MISMATCH, a
# launch shape that changed the results).
set -u
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels must run compiled on the GPU, not interpreted
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check}
TESTS_S=${TESTS_S:-200}
VERIFY_S=${VERIFY_S:-80}
REPORT_S=${REPORT_S:-180}
SWEEP_S=${SWEEP_S:-90}
STAGES=${STAGES:-env tests verify report sweep}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
declare -A RC=()

wants() { [[ " $STAGES " == *" $1 "* ]]; }
section() { { echo; echo "=== $* ($(date +%T))"; } | tee -a "$LOG"; }

if wants env; then
    section env
    { nvidia-smi
      "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name()); \
print('triton', triton.__version__)"
    } 2>&1 | tee -a "$LOG"
    RC[env]=$?
fi

if wants tests; then
    section "tests: pytest -k 'triton or cuda' (timeout ${TESTS_S} s)"
    timeout "$TESTS_S" "$PY" -m pytest tests -q --maxfail=20 -k "triton or cuda" -p no:cacheprovider \
        --durations=10 2>&1 | tee -a "$LOG"
    RC[tests]=$?
    [[ ${RC[tests]} -eq 5 ]] && echo "no test name contains 'triton' or 'cuda'" | tee -a "$LOG"
fi

if wants verify; then
    section "verify --quick --device cuda (timeout ${VERIFY_S} s)"
    timeout "$VERIFY_S" "$PY" -m verify --quick --device cuda --json "$OUT/verify.json" 2>&1 \
        | tee -a "$LOG"
    RC[verify]=$?
fi

if wants report; then
    section "report_gpu.py (timeout ${REPORT_S} s, budget $((REPORT_S - 50)) s)"
    timeout "$REPORT_S" "$PY" benchmarks/report_gpu.py --budget-s "$((REPORT_S - 50))" \
        --out "$OUT/gpu_report" "$@" 2>&1 | tee -a "$LOG"
    RC[report]=$?
fi

if wants sweep; then
    section "report_gpu.py --sweep (timeout ${SWEEP_S} s, budget $((SWEEP_S - 25)) s)"
    timeout "$SWEEP_S" "$PY" benchmarks/report_gpu.py --sweep --budget-s "$((SWEEP_S - 25))" \
        --out "$OUT/gpu_sweep" "$@" 2>&1 | tee -a "$LOG"
    RC[sweep]=$?
fi

section summary
status=0
for stage in env tests verify report sweep; do
    if [[ -n ${RC[$stage]+set} ]]; then
        echo "$stage: exit ${RC[$stage]}$([[ ${RC[$stage]} -eq 124 ]] && echo ' (timed out)')" \
            | tee -a "$LOG"
        [[ ${RC[$stage]} -ne 0 ]] && status=1
    fi
done
exit "$status"
