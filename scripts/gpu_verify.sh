#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, the first and only command to run: it builds
# pyprobtf with CUDA for this GPU, runs the GPU and Triton tests, `pyprobtf check
# --device cuda`, the kernels' GPU tests under compute-sanitizer (memcheck,
# racecheck) and the op benchmarks, and writes the benchmark tables and a summary
# (benchmarks/results/gpu-verify-<gpu>.md/.json) from which GPU_VERIFIED in
# pyprobtf/ops/_backends.py is filled. docs/GPU.md says how to read the results.
#
#   bash scripts/gpu_verify.sh [--dry-run] [--quick] [--out DIR] [--logs DIR] [--steps 1,2,...]
#                              [--benches a,b] [--skip-build] [--archive FILE.tar.gz]
#
# Every step runs under its own time limit and the script goes on past a failed
# step; it exits non-zero if any step failed or ran out of time. The limits add up
# to 470 s, so a full run fits in 8 minutes on an H200 (see BUDGET below).
#
# Nothing is downloaded: the machine may have no network. The Python used is
# $PYTHON, else the first of .venv/bin/python, python3, python whose torch sees a
# GPU (a CUDA build of torch already there is used; torch is never installed).
# Optional GPU peers (flashinfer, faiss-gpu, cuVS) are installed only from the
# wheels in $GPU_VERIFY_WHEELS (default .whl/), when that folder exists.
#
# --dry-run (no GPU needed): prints every step's exact commands and runs what runs
# on a CPU: the environment report, the C++ build (a wheel in the log folder, not
# installed), `pyprobtf check --device cpu` on two ops, the collection of the
# sanitizer's test subset, and the op benchmarks in --quick mode on the CPU into a
# temporary folder (never benchmarks/results unless --out says so).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

usage() {
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --dry-run       no GPU needed: print every command, run the CPU parts, skip the GPU parts (with the reason)
  --quick         fewer hypothesis examples, float32-only check, benchmarks in --quick mode
  --out DIR       results folder (default benchmarks/results; with --dry-run a new temporary folder)
  --logs DIR      folder for each step's full log (default build/gpu-verify-<gpu>)
  --steps LIST    comma-separated step numbers to run (default all: 1,2,3,4,5,6,7); the others are reported skipped
  --benches LIST  comma-separated benchmark names (default: the op benchmarks, OP_BENCHES below)
  --skip-build    use the pyprobtf already installed in the environment (step 2 only checks it)
  --archive FILE  also pack the summary, the benchmark tables and the logs into FILE (.tar.gz)
Environment: PYTHON (the interpreter), GPU_VERIFY_WHEELS (peer wheels folder, default .whl),
  GPU_VERIFY_BUDGET_<STEP> (seconds; STEP = ENV BUILD TESTS CHECK SANITIZER BENCH SUMMARY),
  GPU_VERIFY_DRY_RUN_CHECK_OPS (the ops --dry-run checks on the CPU, default "lincomb affine_coupling"),
  GPU_VERIFY_COMMIT (the commit the summary names, where the tree has no git history)
EOF
}

# ----------------------------------------------------------------------------- settings

# One benchmark per op: affine_coupling, lincomb (solvers), vq_nearest (vq), sample_logits (sampling); sampling
# last: on a GPU its full run has the most cases (4 batch sizes x 3 vocabularies x its parameter sets).
OP_BENCHES="affine_coupling solvers vq sampling"
# The sanitizer's subset: the kernels' own GPU tests at small sizes (large shapes, peak memory and
# CUDA-graph capture left out: under memcheck and racecheck every launch is tens of times slower).
SANITIZER_TESTS="tests/test_affine_coupling.py tests/test_lincomb.py tests/test_vq_nearest.py tests/test_sampling.py tests/test_philox.py"
SANITIZER_K="not large_shapes and not peak_memory and not graph_capture"
SANITIZER_EXAMPLES=3
# Ops that --dry-run checks on the CPU (the GPU run checks every op).
DRY_RUN_CHECK_OPS=${GPU_VERIFY_DRY_RUN_CHECK_OPS:-lincomb affine_coupling}

# Seconds per step on an H200 (16 cores): 15 + 110 + 90 + 45 + 60 + 140 + 10 = 470 s (a command past its
# limit is killed 10 s after it is told to stop). Estimates: no GPU has run this script yet.
declare -A BUDGET=(
  [ENV]=15          # nvidia-smi, nvcc, versions
  [BUILD]=110       # C++ and CUDA (sm_<cc>) with ninja on every core
  [TESTS]=90        # pytest -m "(gpu or triton) and not acceptance", Triton compiling for the GPU
  [CHECK]=45        # pyprobtf check --device cuda, four dtypes
  [SANITIZER]=60    # memcheck, then racecheck in what is left
  [BENCH]=140       # the op benchmarks, one after another
  [SUMMARY]=10      # the summary files and the archive
)
# --dry-run does other work, on a CPU: building the C++ code from scratch on two busy cores takes minutes.
declare -A DRY_RUN_BUDGET=([ENV]=60 [BUILD]=600 [TESTS]=10 [CHECK]=120 [SANITIZER]=120 [BENCH]=300 [SUMMARY]=30)

ARGS=("$@")
DRY_RUN=0 QUICK=0 SKIP_BUILD=0 OUT_DIR="" LOG_DIR="" ARCHIVE="" STEPS="1,2,3,4,5,6,7" BENCHES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --quick) QUICK=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    --logs) LOG_DIR=${2:?--logs needs a folder}; shift ;;
    --steps) STEPS=${2:?--steps needs a list such as 1,6,7}; shift ;;
    --benches) BENCHES=${2:?--benches needs a list such as vq,sampling}; shift ;;
    --archive) ARCHIVE=${2:?--archive needs a file name}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_verify.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case ",$STEPS," in *[!0-9,]*) echo "gpu_verify.sh: error: --steps takes step numbers 1 to 7 such as 1,6,7; got '$STEPS'" >&2; exit 2 ;; esac
for key in "${!BUDGET[@]}"; do
  [ "$DRY_RUN" = 1 ] && BUDGET[$key]=${DRY_RUN_BUDGET[$key]}
  override=GPU_VERIFY_BUDGET_$key
  BUDGET[$key]=${!override:-${BUDGET[$key]}}
done
BENCHES=${BENCHES//,/ }
BENCHES=${BENCHES:-$OP_BENCHES}

# ----------------------------------------------------------------------------- helpers

now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# The command as one pastes it into a shell: arguments with spaces or shell characters in single quotes.
quote() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s' "${out% }"
}

# run LIMIT CMD...: print the command, run it under `timeout`, its output to the terminal and the step's log.
run() {
  local limit=$1; shift
  echo "+ $(quote "$@")   [limit ${limit}s]" | tee -a "$STEP_LOG"
  local rc
  if [ "${RUN_QUIET:-0}" = 1 ]; then
    timeout --kill-after=10 "$limit" "$@" >>"$STEP_LOG" 2>&1
    rc=$?
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$STEP_LOG"
    rc=${PIPESTATUS[0]}
  fi
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "!! timed out after ${limit}s" | tee -a "$STEP_LOG"
    STEP_TIMED_OUT=1
  elif [ "$rc" != 0 ]; then
    echo "!! exit status $rc" | tee -a "$STEP_LOG"
  fi
  return "$rc"
}

# would CMD...: what the GPU run executes here; printed, not run (--dry-run).
would() { echo "[dry-run, not run] $(quote "$@")" | tee -a "$STEP_LOG"; }

# left [MIN]: the seconds left of the current step's budget, at least MIN (default 1).
left() {
  awk -v s="$STEP_START" -v b="$STEP_BUDGET" -v n="$(now)" -v m="${1:-1}" 'BEGIN { l = int(s + b - n); print (l < m ? m : l) }'
}

STEP_ROWS=()
# step NUMBER KEY TITLE FUNCTION: header, time limit, status (PASS FAIL TIMEOUT SKIP) and a note.
step() {
  local num=$1 key=$2 title=$3 fn=$4
  STEP_LOG="$LOG_DIR/step$num-${key,,}.log"; : >"$STEP_LOG"
  STEP_BUDGET=${BUDGET[$key]} STEP_START=$(now) STEP_TIMED_OUT=0 STEP_STATUS="" STEP_NOTE=""
  echo
  echo "== [$num/7] $title (budget ${STEP_BUDGET}s) ==" | tee -a "$STEP_LOG"
  if [[ ",$STEPS," != *",$num,"* ]]; then
    STEP_STATUS=SKIP STEP_NOTE="not selected (--steps $STEPS)"
  else
    "$fn"
    local rc=$?
    if [ -z "$STEP_STATUS" ]; then
      if [ "$STEP_TIMED_OUT" = 1 ]; then STEP_STATUS=TIMEOUT
      elif [ "$rc" = 0 ]; then STEP_STATUS=PASS
      else STEP_STATUS=FAIL; fi
    fi
  fi
  local took; took=$(seconds_since "$STEP_START")
  echo "-- [$num/7] $title: $STEP_STATUS in ${took}s${STEP_NOTE:+ ($STEP_NOTE)}" | tee -a "$STEP_LOG"
  STEP_ROWS+=("$num	$title	$STEP_STATUS	$took	$STEP_BUDGET	$STEP_NOTE")
}
skip() { STEP_STATUS=SKIP STEP_NOTE=$1; echo "skipped: $1" | tee -a "$STEP_LOG"; }

# ----------------------------------------------------------------------------- the interpreter and the GPU

has_cuda_torch() { "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
has_torch() { "$1" -c "import torch" 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
  for candidate in .venv/bin/python python3 python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if [ "$DRY_RUN" = 1 ] && has_torch "$candidate" || has_cuda_torch "$candidate"; then PYTHON=$candidate; break; fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_verify.sh: error: no Python with torch found (tried .venv/bin/python, python3, python); set PYTHON" >&2
  else
    echo "gpu_verify.sh: error: no Python whose torch sees a CUDA device (tried .venv/bin/python, python3, python);" \
         "set PYTHON to one, or run with --dry-run on a machine without a GPU" >&2
  fi
  exit 2
fi
PY=$PYTHON
if [ "$DRY_RUN" = 0 ] && ! has_cuda_torch "$PY"; then
  echo "gpu_verify.sh: error: $PY's torch sees no CUDA device; run with --dry-run on a machine without a GPU" >&2
  exit 2
fi
if [ "$DRY_RUN" = 0 ]; then
  # Triton must compile for the GPU: its interpreter is only for machines without one.
  unset TRITON_INTERPRET
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
fi

# GPU name (as the benchmark files name it, through benchmarks/_common.device_slug) and compute capability.
read -r GPU_SLUG GPU_CC < <("$PY" - "$DRY_RUN" <<'EOF'
import sys
import torch
sys.path.insert(0, "benchmarks")
import _common  # noqa: E402
if sys.argv[1] == "1" or not torch.cuda.is_available():
    print("cpu", "none")
else:
    major, minor = torch.cuda.get_device_capability(0)
    print(_common.device_slug("cuda"), f"{major}{minor}")
EOF
)
if [ -z "${GPU_SLUG:-}" ]; then echo "gpu_verify.sh: error: $PY could not import torch and benchmarks/_common.py" >&2; exit 2; fi
# The CUDA architecture the GPU run builds for: the GPU's own; in --dry-run, CMake's default for this project.
CUDA_ARCH=$([ "$GPU_CC" = none ] && echo 90 || echo "$GPU_CC")
DEVICE=$([ "$DRY_RUN" = 1 ] && echo cpu || echo cuda)

if [ -z "$OUT_DIR" ]; then
  if [ "$DRY_RUN" = 1 ]; then OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-verify-dry-run.XXXXXX"); else OUT_DIR=benchmarks/results; fi
fi
LOG_DIR=${LOG_DIR:-build/gpu-verify-$GPU_SLUG}
mkdir -p "$OUT_DIR" "$LOG_DIR" || { echo "gpu_verify.sh: error: cannot create $OUT_DIR or $LOG_DIR" >&2; exit 2; }
OUT_DIR=$(cd "$OUT_DIR" && pwd) LOG_DIR=$(cd "$LOG_DIR" && pwd)
EXAMPLES=$([ "$QUICK" = 1 ] && echo 10 || echo "${PYPROBTF_MAX_EXAMPLES:-40}")
WHEELS=${GPU_VERIFY_WHEELS:-.whl}
START=$(now)
rm -f "$LOG_DIR"/step*.log "$LOG_DIR/env.json" "$LOG_DIR/steps.tsv"  # an earlier run's, which the summary would read
date -u +%Y-%m-%dT%H:%M:%SZ >"$LOG_DIR/started"

echo "gpu_verify.sh: $([ "$DRY_RUN" = 1 ] && echo 'DRY RUN (CPU parts only)' || echo "GPU run on $GPU_SLUG (sm_$GPU_CC)")"
echo "  python:  $PY"
echo "  results: $OUT_DIR"
echo "  logs:    $LOG_DIR"
echo "  steps:   $STEPS$([ "$QUICK" = 1 ] && echo ' (quick)')"

# ----------------------------------------------------------------------------- the steps

step_env() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    run "$(left)" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv
    run "$(left)" nvidia-smi
  else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)" | tee -a "$STEP_LOG"
  fi
  if command -v nvcc >/dev/null 2>&1; then run "$(left)" nvcc --version; else echo "nvcc: not found" | tee -a "$STEP_LOG"; fi
  if command -v compute-sanitizer >/dev/null 2>&1; then run "$(left)" compute-sanitizer --version
  else echo "compute-sanitizer: not found" | tee -a "$STEP_LOG"; fi
  run "$(left)" "$PY" - "$LOG_DIR/env.json" <<'EOF'
import importlib.util, json, platform, shutil, subprocess, sys
import torch
env = {"python": platform.python_version(), "python_path": sys.executable, "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    import triton
    env["triton"] = triton.__version__
except ImportError:
    env["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
               gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
if shutil.which("nvidia-smi"):
    q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                       text=True)
    env["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
if shutil.which("nvcc"):
    v = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    env["nvcc"] = v[-1] if v else None
env["peers"] = {name: importlib.util.find_spec(name) is not None
                for name in ("flashinfer", "faiss", "cuvs", "transformers", "zuko", "nflows", "normflows")}
for key, value in env.items():
    print(f"{key:18s} {value}")
json.dump(env, open(sys.argv[1], "w"), indent=1)
EOF
}

step_build() {
  local gpu_build=(env PYPROBTF_CUDA=ON PYPROBTF_CUDA_ARCHITECTURES="$CUDA_ARCH" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
                   "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .)
  local status=0
  [ "$DRY_RUN" = 1 ] && would "${gpu_build[@]}"
  if [ "$SKIP_BUILD" = 1 ]; then
    echo "--skip-build: using the pyprobtf installed in $PY's environment" | tee -a "$STEP_LOG"
  elif [ "$DRY_RUN" = 1 ]; then
    # The C++ part of that build, as a wheel in the log folder (nothing installed), in a build folder of its own
    # so that the project's incremental build (build/<wheel tag>) keeps its settings.
    run "$(left)" env PYPROBTF_CUDA=OFF CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$PY" -m pip wheel --no-index --no-build-isolation --no-deps --config-settings=build-dir="$LOG_DIR/cmake-build" \
      -w "$LOG_DIR/wheel" . || status=1
  else
    run "$(left)" "${gpu_build[@]}" || status=1
  fi
  # Which backends the installed pyprobtf has here; on a GPU, the CUDA and Triton backends must run on it
  # (given 20 s even when the build took the whole budget).
  [ "$status" = 0 ] && run "$(left 20)" "$PY" - "$DEVICE" <<'EOF' || status=1
import sys
import pyprobtf
statuses = pyprobtf.ops.available_backends()
for name, status in statuses.items():
    print(f"  {name:9s} {status!r}")
missing = [name for name in ("cuda", "triton") if sys.argv[1] == "cuda" and "cuda" not in statuses[name].devices]
if missing:
    sys.exit(f"pyprobtf's {' and '.join(missing)} backend(s) cannot run on this GPU (see above)")
EOF
  install_peer_wheels
  [ "$SKIP_BUILD" = 1 ] && [ "$status" = 0 ] && STEP_STATUS=SKIP STEP_NOTE="--skip-build: the installed pyprobtf, checked"
  return "$status"
}

# Optional GPU peers, only from local wheels (no network here); a failure here fails no step.
install_peer_wheels() {
  local wheels=("$WHEELS"/*.whl)
  if [ ! -e "${wheels[0]}" ]; then
    echo "GPU peers: skipped: no wheels in $WHEELS/ (nothing is downloaded; put flashinfer, faiss-gpu or cuVS" \
         "wheels there, with any requirement missing from the environment, to time them)" | tee -a "$STEP_LOG"
    return 0
  fi
  local target="$LOG_DIR/peer-site"
  local cmd=("$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$target" "${wheels[@]}")
  if [ "$DRY_RUN" = 1 ]; then
    would "${cmd[@]}"
    return 0
  fi
  if run "$(left)" "${cmd[@]}"; then
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
    run "$(left)" "$PY" -c "import importlib
for name in ('flashinfer', 'faiss', 'cuvs'):
    try:
        m = importlib.import_module(name)
        print(f'GPU peers: {name} {getattr(m, \"__version__\", \"\")} imports' + (
            f' (GPU index: {hasattr(m, \"StandardGpuResources\")})' if name == 'faiss' else ''))
    except Exception as exc:
        print(f'GPU peers: {name} does not import: {type(exc).__name__}: {exc}')" || true
  else
    echo "GPU peers: the wheels in $WHEELS/ did not install; the benchmarks run without them" | tee -a "$STEP_LOG"
  fi
  return 0
}

step_tests() {
  local cmd=(env -u TRITON_INTERPRET PYPROBTF_MAX_EXAMPLES="$EXAMPLES" "$PY" -m pytest -q -m "(gpu or triton) and not acceptance"
             --durations=15 -rfEs)
  # Several workers when pytest-xdist is there: Triton's compilations then run side by side.
  if "$PY" -c "import xdist" 2>/dev/null; then cmd+=(-n 4); fi
  cmd+=(tests)
  if [ "$DRY_RUN" = 1 ]; then
    would "${cmd[@]}"
    skip "needs a CUDA device: Triton tests compiled for the GPU and the CUDA backends' tests (on CPU, CI runs the Triton tests under TRITON_INTERPRET=1)"
    return 0
  fi
  run "$(left)" "${cmd[@]}"
}

step_check() {
  local dtypes=()
  [ "$QUICK" = 1 ] && dtypes=(--dtype float32)
  local gpu_check=("$PY" -m pyprobtf check --device cuda "${dtypes[@]}")
  if [ "$DRY_RUN" = 1 ]; then
    would "${gpu_check[@]}"
    # shellcheck disable=SC2086
    run "$(left)" "$PY" -m pyprobtf check $DRY_RUN_CHECK_OPS --device cpu --dtype float32
    return
  fi
  run "$(left)" "${gpu_check[@]}"
}

step_sanitizer() {
  local half; half=$(( STEP_BUDGET / 2 ))
  # shellcheck disable=SC2206
  local tests=($SANITIZER_TESTS)
  local pytest=("$PY" -m pytest -q -m gpu -k "$SANITIZER_K" -p no:randomly "${tests[@]}")
  # Without torch's caching allocator every tensor is its own allocation, so memcheck sees an access past its end.
  local memcheck=(env -u TRITON_INTERPRET PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYPROBTF_MAX_EXAMPLES="$SANITIZER_EXAMPLES"
                  compute-sanitizer --tool memcheck --target-processes all --report-api-errors no --error-exitcode 86
                  --print-limit 20 "${pytest[@]}")
  local racecheck=(env -u TRITON_INTERPRET PYPROBTF_MAX_EXAMPLES="$SANITIZER_EXAMPLES"
                   compute-sanitizer --tool racecheck --target-processes all --error-exitcode 86 --print-limit 20
                   "${pytest[@]}")
  if [ "$DRY_RUN" = 1 ]; then
    would "${memcheck[@]}"
    would "${racecheck[@]}"
    # The subset is collected here, so a renamed test cannot leave the sanitizer with nothing to run.
    RUN_QUIET=1 run "$(left)" "$PY" -m pytest --collect-only -q -m gpu -k "$SANITIZER_K" "${tests[@]}"
    local collected
    collected=$(grep -Eo '^[0-9]+(/[0-9]+)? tests? collected' "$STEP_LOG" | tail -1 | cut -d/ -f1 | cut -d' ' -f1)
    echo "the sanitizer's subset: ${collected:-0} tests" | tee -a "$STEP_LOG"
    if [ -z "$collected" ] || [ "$collected" = 0 ]; then
      STEP_NOTE="the subset selects no test"
      echo "!! the sanitizer's subset (-m gpu -k '$SANITIZER_K') selects no test" | tee -a "$STEP_LOG"
      return 1
    fi
    skip "needs a CUDA device and compute-sanitizer; its subset, $collected GPU tests, collected here"
    return 0
  fi
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    STEP_NOTE="compute-sanitizer is not installed"
    echo "!! compute-sanitizer is not installed" | tee -a "$STEP_LOG"
    return 1
  fi
  local status=0
  run "$half" "${memcheck[@]}" || status=1
  run "$(left)" "${racecheck[@]}" || status=1
  return "$status"
}

step_bench() {
  local quick=() name failed=() done_=() status=0
  [ "$QUICK" = 1 ] || [ "$DRY_RUN" = 1 ] && quick=(--quick)
  # Benchmarks that take --device cuda but are not op benchmarks run only when named in --benches.
  local others
  others=$("$PY" - $BENCHES <<'EOF'
import pathlib, re, sys
names = [p.stem.removeprefix("bench_") for p in sorted(pathlib.Path("benchmarks").glob("bench_*.py"))
         if re.search(r'add_argument\(\s*"--device"[^)]*"cuda"', p.read_text())]
print(" ".join(n for n in names if n not in sys.argv[1:]))
EOF
)
  [ -n "$others" ] && echo "not run (name them in --benches to add them): $others" | tee -a "$STEP_LOG"
  for name in $BENCHES; do
    local cmd=("$PY" -m pyprobtf bench "$name" --device "$DEVICE" "${quick[@]}" --out "$OUT_DIR")
    if [ "$DRY_RUN" = 1 ]; then
      would "$PY" -m pyprobtf bench "$name" --device cuda $([ "$QUICK" = 1 ] && echo --quick) --out "$OUT_DIR"
    fi
    if run "$(left)" "${cmd[@]}"; then done_+=("$name"); else failed+=("$name"); status=1; fi
  done
  STEP_NOTE="${done_[*]:+ran: ${done_[*]}}${failed[*]:+; failed: ${failed[*]}}"
  STEP_NOTE=${STEP_NOTE#; }
  return "$status"
}

step_summary() {
  printf '%s\n' "${STEP_ROWS[@]}" >"$LOG_DIR/steps.tsv"
  run "$(left)" "$PY" - "$LOG_DIR" "$OUT_DIR" "$GPU_SLUG" "$DRY_RUN" "$QUICK" "$(quote "$0" "${ARGS[@]}")" <<'EOF' || return 1
"""Write gpu-verify-<gpu>.md and .json: each step's status and time, the check's GPU results, the tables written,
and the GPU_VERIFIED entries that the run supports (only when the tests, the check and the sanitizer all passed)."""
import datetime, json, os, pathlib, re, subprocess, sys

logs, out, slug, dry_run, quick, command = sys.argv[1:7]
logs, out = pathlib.Path(logs), pathlib.Path(out)
env = json.loads((logs / "env.json").read_text()) if (logs / "env.json").exists() else {}
started = (logs / "started").read_text().strip()
steps = []
for line in (logs / "steps.tsv").read_text().splitlines():
    num, title, status, seconds, budget, note = (line.split("\t") + [""] * 6)[:6]
    steps.append({"step": int(num), "title": title, "status": status, "seconds": float(seconds),
                  "budget_seconds": int(budget), "note": note})
steps.append({"step": 7, "title": "results and summary", "status": "PASS", "seconds": None, "budget_seconds": None,
              "note": "this file"})

# `pyprobtf check` lines: op, backend, device, dtype, PASS/FAIL.
checks = []
check_log = logs / "step4-check.log"
if check_log.exists():
    for m in re.finditer(r"^(\w+)\s+(reference|cpp|triton|cuda)\s+(cpu|cuda)\s+(\w+)\s+(PASS|FAIL)\b",
                         check_log.read_text(), re.M):
        checks.append(dict(zip(("op", "backend", "device", "dtype", "result"), m.groups())))

status = {s["step"]: s["status"] for s in steps}
# The commit that ran: GPU_VERIFY_COMMIT where the tree was copied without its git history.
commit = os.environ.get("GPU_VERIFY_COMMIT", "")
if not commit:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
commit = commit or "unknown"
date = started[:10]
verified = {}
if dry_run == "0" and all(status.get(n) == "PASS" for n in (3, 4, 5)):
    what = "pytest -m gpu and -m triton, pyprobtf check --device cuda, compute-sanitizer memcheck and racecheck"
    for op, backend in sorted({(c["op"], c["backend"]) for c in checks if c["device"] == "cuda"}):
        rows = [c for c in checks if c["device"] == "cuda" and (c["op"], c["backend"]) == (op, backend)]
        if backend in ("triton", "cuda") and all(c["result"] == "PASS" for c in rows):
            verified[f"{op}/{backend}"] = f"{env.get('gpu', slug)}, {date} ({what}; commit {commit})"

started_epoch = datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
    tzinfo=datetime.timezone.utc).timestamp()
tables = sorted(p.name for p in out.glob(f"*-{slug}.*")
                if p.suffix in (".md", ".json") and not p.name.startswith("gpu-verify-")
                and p.stat().st_mtime >= started_epoch - 1)

summary = {"gpu": env.get("gpu"), "slug": slug, "started": started, "commit": commit, "command": command,
           "dry_run": dry_run == "1", "quick": quick == "1", "environment": env, "steps": steps,
           "checks": checks, "benchmark_tables": tables, "gpu_verified": verified, "logs": str(logs)}
title = f"GPU verification on {env.get('gpu') or 'no GPU (dry run)'}"
lines = [f"# {title}", "", f"- started {started}, commit {commit}, {'DRY RUN, ' if dry_run == '1' else ''}"
         f"{'quick' if quick == '1' else 'full'} mode", f"- command: `{command}`",
         (f"- GPU {env['gpu']} (compute capability {env.get('compute_capability')}, {env.get('multiprocessors')} SMs, "
          f"{env.get('gpu_memory_gib')} GiB), driver {env.get('driver')}" if env.get("gpu") else "- no GPU here"),
         f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, "
         f"nvcc: {env.get('nvcc')}, python {env.get('python')}",
         f"- peers importable: {', '.join(k for k, v in env.get('peers', {}).items() if v) or 'none'}",
         f"- full logs: {logs}", "", "## Steps", "", "| step | status | seconds | budget s | note |", "|---|---|---|---|---|"]
for s in steps:
    secs = "" if s["seconds"] is None else f"{s['seconds']:.1f}"
    lines.append(f"| {s['step']}. {s['title']} | {s['status']} | {secs} | {s['budget_seconds'] or ''} | {s['note']} |")
cuda_checks = [c for c in checks if c["device"] == "cuda"]
if cuda_checks:
    lines += ["", "## pyprobtf check --device cuda", "", "| op | backend | dtype | result |", "|---|---|---|---|"]
    lines += [f"| {c['op']} | {c['backend']} | {c['dtype']} | {c['result']} |" for c in cuda_checks]
lines += ["", "## Benchmark tables written", ""] + ([f"- {t}" for t in tables] or ["- none"])
lines += ["", "## GPU_VERIFIED", ""]
if verified:
    lines += ["Entries this run supports (pyprobtf/ops/_backends.py, `(op, backend): (\"...\",)`):", ""]
    lines += [f"- `(\"{k.split('/')[0]}\", \"{k.split('/')[1]}\")`: `\"{v}\"`" for k, v in verified.items()]
else:
    lines.append("None: " + ("a dry run verifies nothing on a GPU." if dry_run == "1" else
                             "an entry needs steps 3, 4 and 5 passed, and that op and backend passing the check."))
(out / f"gpu-verify-{slug}.md").write_text("\n".join(lines) + "\n")
(out / f"gpu-verify-{slug}.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"summary: {out / f'gpu-verify-{slug}.md'} and .json")
EOF
  if [ -n "$ARCHIVE" ]; then
    local files=("$OUT_DIR/gpu-verify-$GPU_SLUG.md" "$OUT_DIR/gpu-verify-$GPU_SLUG.json")
    local f
    for f in "$OUT_DIR"/*-"$GPU_SLUG".md "$OUT_DIR"/*-"$GPU_SLUG".json; do
      [ -e "$f" ] && [ "$f" -nt "$LOG_DIR/started" ] && files+=("$f")
    done
    local list=() seen=""
    for f in "${files[@]}"; do [[ " $seen " == *" $f "* ]] || { list+=("${f#"$OUT_DIR"/}"); seen+=" $f"; }; done
    mkdir -p "$(dirname "$ARCHIVE")"
    # The tables and the summary at the top (to unpack into benchmarks/results), the logs under logs/.
    run "$(left)" tar czf "$ARCHIVE" --transform 's,^\./,logs/,' -C "$OUT_DIR" "${list[@]}" -C "$LOG_DIR" --exclude ./wheel --exclude ./cmake-build --exclude ./peer-site --exclude ./step7-summary.log . \
      || return 1
  fi
}

step 1 ENV "environment" step_env
step 2 BUILD "build pyprobtf with CUDA for sm_$CUDA_ARCH$([ "$DRY_RUN" = 1 ] && echo ' (dry run: its C++ part as a wheel, not installed)')" step_build
step 3 TESTS "pytest -m gpu and the Triton tests on the GPU" step_tests
step 4 CHECK "pyprobtf check --device cuda$([ "$DRY_RUN" = 1 ] && echo " (dry run: $DRY_RUN_CHECK_OPS on cpu)")" step_check
step 5 SANITIZER "compute-sanitizer memcheck and racecheck over the kernels' GPU tests" step_sanitizer
step 6 BENCH "op benchmarks on $DEVICE$([ "$DRY_RUN" = 1 ] && echo ' (dry run: --quick, into the results folder above)')" step_bench
step 7 SUMMARY "results and summary" step_summary

echo
echo "== summary ($(seconds_since "$START")s in all) =="
failed=0
for row in "${STEP_ROWS[@]}"; do
  IFS=$'\t' read -r num title status took budget note <<<"$row"
  printf '  [%s] %-7s %6ss / %4ss  %s%s\n' "$num" "$status" "$took" "$budget" "$title" "${note:+  -- $note}"
  case "$status" in FAIL|TIMEOUT) failed=1 ;; esac
done
echo "  results: $OUT_DIR/gpu-verify-$GPU_SLUG.md"
[ -n "$ARCHIVE" ] && echo "  archive: $ARCHIVE"
exit "$failed"
