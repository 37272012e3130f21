#!/usr/bin/env bash
# One-GPU check, in one go of at most ~8.5 minutes; every result lands in $OUT (8 files at most):
#   summary.txt        versions, the GPU, each part's wall time and exit status, the key figures
#   bench.log/.json    (a) bench/bench_train.py: minift's GPT beside a plain GPT-2, both GPU configs, compiled
#   tiny.log           (b) python pipeline.py --device=cuda (tiny preset), with its wall time
#   tiny_report.json   (b) its report.json, or the finished stages' stage.json files if it ran out of time
#   small_data.log     (c) the small preset's corpus made at 1/10 size (20 MB, vocab 8,192): its seconds scale up
#   small_pretrain.log (c) train_pretrain.py --preset=small for a few hundred steps: tokens/s and MFU in the loop
#
#     OUT=/tmp/gpu_out bash bench/gpu_check.sh
# Each part runs under `timeout`, sized from the time left, so the script always reaches its summary.
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15   # tqdm bars redrawn at most every 15 s: short logs
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BUDGET=${BUDGET:-500}   # seconds for everything
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(date +%s) + START )); }
note() { echo "[$(elapsed)s] $*" | tee -a "$OUT/summary.txt"; }
# Run "$@" with a timeout of min($1, time left - $2), tee its output (carriage returns made newlines) to $3.
part() {
    local cap=$1 reserve=$2 log=$3; shift 3
    local t=$(( $(left) - reserve )); (( t > cap )) && t=$cap
    if (( t < 20 )); then note "skipped (no time left): $*"; return 1; fi
    local t0=$(date +%s)
    timeout --kill-after=10 "$t" "$@" 2>&1 | tr '\r' '\n' | tee "$OUT/$log" >/dev/null
    local rc=$?
    note "rc=$rc in $(( $(date +%s) - t0 ))s (timeout ${t}s): $*"
    return $rc
}

: > "$OUT/summary.txt"
note "git $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPU cores"
python - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
for name in ("numpy", "tiktoken", "tqdm", "triton"):
    try:
        print(name, __import__(name).__version__)
    except ImportError:
        print(name, "MISSING")
EOF
if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    note "no CUDA device: nothing to check"; exit 1
fi

# (a) training speed side by side, both configs, compiled (4 compilations: most of the time)
part 200 280 bench.log python bench/bench_train.py --json="$OUT/bench.json"
grep -E "^config|minift|GPT-2" "$OUT/bench.log" >> "$OUT/summary.txt"

# (b) the tiny pipeline end to end on the GPU
rm -rf /tmp/tiny_gpu
part 260 60 tiny.log python pipeline.py --device=cuda --out_dir=/tmp/tiny_gpu
if [ -f /tmp/tiny_gpu/report.json ]; then
    cp /tmp/tiny_gpu/report.json "$OUT/tiny_report.json"
else
    python - > "$OUT/tiny_report.json" <<'EOF'
import glob, json, os
print(json.dumps({os.path.basename(os.path.dirname(p)): json.load(open(p))
                  for p in sorted(glob.glob("/tmp/tiny_gpu/*/stage.json"))}, indent=1))
EOF
fi
python - >> "$OUT/summary.txt" <<'EOF'
import json
import os
r = json.load(open(os.path.join(os.environ["OUT"], "tiny_report.json")))
stages = r.get("stages", r)
print("tiny stages (s):", {k: v.get("seconds") for k, v in stages.items()}, "total", r.get("total_seconds"))
print("tiny pretrain:", {k: stages.get("pretrain", {}).get(k) for k in ("val_loss", "tokens_per_s", "mfu")})
if "eval" in r:
    print("tiny eval prompt_strict:", {m: {s: r["eval"][m][s]["prompt_strict"] for s in r["eval"][m]} for m in r["eval"]})
EOF

# (c) the small preset: its data stage at a tenth of the size (the full one scales with size_mb), then
# its pretraining loop on the tiny run's corpus (vocab 2,053, not 8,192) for tokens/s and MFU
rm -rf /tmp/small20
part 100 40 small_data.log python -c "
import time
from data.prepare import prepare
from data.make_sft import make_sft
t = time.time(); prepare('/tmp/small20/corpus', size_mb=20, vocab_size=8192); print('prepare seconds', round(time.time() - t, 1))
t = time.time(); make_sft('/tmp/small20/sft', n_train=10000, n_test=500, n_heldout=500, n_rl=2000)
print('make_sft seconds (1/10 of the small preset)', round(time.time() - t, 1))"
grep -E "seconds" "$OUT/small_data.log" >> "$OUT/summary.txt"
if [ -f /tmp/tiny_gpu/data/corpus/train.bin ]; then
    part 150 5 small_pretrain.log python train_pretrain.py --preset=small --device=cuda \
        --data_dir=/tmp/tiny_gpu/data/corpus --out_dir=/tmp/small_pretrain --resume=False \
        --max_steps=1000 --log_interval=50 --eval_interval=100000 --eval_batches=2
    grep -E "tok_per_s|mfu" /tmp/small_pretrain/metrics.jsonl 2>/dev/null | tail -4 >> "$OUT/summary.txt"
fi
note "done"
