#!/usr/bin/env bash
# One-GPU check, in one go of at most ~8 minutes; every result lands in $OUT (8 files at most):
#   summary.txt        versions, the GPU, each part's wall time and exit status, the key figures
#   bench.log/.json    (a) bench/bench_train.py: minift's GPT beside a plain GPT-2, both GPU configs, compiled
#   small_pretrain.log (b) train_pretrain.py --preset=small (compiled) for 600 steps: tokens/s and MFU in the loop
#   small_resume.log   (b2) the same run resumed on the GPU for 20 steps
#   tiny.log           (c) python pipeline.py --device=cuda (tiny preset), with its wall time
#   tiny_report.json   (c) its report.json, or the finished stages' stage.json files if it ran out of time
#   small_data.log     (d) the small preset's data stage at 1/10 size (20 MB, vocab 8,192), in the background
#                          from the start: its seconds, times ~10 but the tokenizer's, estimate the full stage
#
#     OUT=/tmp/gpu_out bash bench/gpu_check.sh
# Each part runs under `timeout`, sized from the time left, so the script always reaches its summary.
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15   # tqdm bars redrawn at most every 15 s: short logs
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BUDGET=${BUDGET:-470}   # seconds for everything
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(date +%s) + START )); }
note() { echo "[$(elapsed)s] $*" | tee -a "$OUT/summary.txt"; }
# part CAP RESERVE LOG command...: run the command with a timeout of min(CAP, time left - RESERVE),
# its output (carriage returns made newlines) in $OUT/LOG.
part() {
    local cap=$1 reserve=$2 log=$3; shift 3
    local t=$(( $(left) - reserve )); (( t > cap )) && t=$cap
    if (( t < 20 )); then note "skipped (no time left): $*"; return 1; fi
    local t0=$(date +%s)
    timeout --kill-after=10 "$t" "$@" 2>&1 | tr '\r' '\n' > "$OUT/$log"
    local rc=$?
    note "rc=$rc in $(( $(date +%s) - t0 ))s (timeout ${t}s): $*"
    return $rc
}

: > "$OUT/summary.txt"
note "git $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPU cores"
python - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
for name in ("numpy", "tiktoken", "tqdm", "triton"):
    try:
        print(name, __import__(name).__version__)
    except ImportError:
        print(name, "MISSING")
PY
if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    note "no CUDA device: nothing to check"; exit 1
fi

# (d, in the background) the small preset's data stage at a tenth of its size, niced, on the CPU cores
rm -rf /tmp/small20
( timeout --kill-after=5 $(( BUDGET - 30 )) nice -n 10 python -c "
import time
from data.prepare import prepare
from data.make_sft import make_sft
t = time.time(); prepare('/tmp/small20/corpus', size_mb=20, vocab_size=8192); print('prepare seconds', round(time.time() - t, 1))
t = time.time(); make_sft('/tmp/small20/sft', n_train=10000, n_test=500, n_heldout=500, n_rl=2000)
print('make_sft seconds (1/10 of the small preset)', round(time.time() - t, 1))" 2>&1 | tr '\r' '\n' > "$OUT/small_data.log" ) &
DATA_PID=$!

# (a) training speed side by side, both configs, compiled (4 compilations: most of the time)
part 190 250 bench.log python bench/bench_train.py --json="$OUT/bench.json"
grep -E "^config|minift|GPT-2" "$OUT/bench.log" >> "$OUT/summary.txt"

# (b) the small preset's pretraining loop (compiled) on a 4 MB corpus with the small preset's tokenizer
# setting (--vocab_size=8192: the closed-vocabulary corpus stops BPE at about 3,800 ids), tokens/s and MFU.
# The bench's small config keeps 8,192 ids, so the loop's output layer is smaller than the bench's.
rm -rf /tmp/corpus4 /tmp/small_pretrain
timeout 60 python data/prepare.py --out_dir=/tmp/corpus4 --size_mb=4 --vocab_size=8192 > /dev/null 2>&1 \
    || note "the 4 MB corpus for (b): data/prepare.py failed (rc=$?)"
part 100 150 small_pretrain.log python train_pretrain.py --preset=small --device=cuda \
    --data_dir=/tmp/corpus4 --out_dir=/tmp/small_pretrain --resume=False \
    --max_steps=600 --log_interval=50 --eval_interval=100000 --eval_batches=2
tail -n 3 /tmp/small_pretrain/metrics.jsonl >> "$OUT/summary.txt" 2>/dev/null
# (b2) resume that run on the GPU for 20 more steps, uncompiled: the checkpoint loads onto the GPU
# (map_location) and its random state goes back to the CPU generators (training.set_rng_state)
if [ -f /tmp/small_pretrain/ckpt.pt ]; then
    part 60 140 small_resume.log python train_pretrain.py --preset=small --device=cuda \
        --data_dir=/tmp/corpus4 --out_dir=/tmp/small_pretrain --compile=False \
        --max_steps=620 --log_interval=10 --eval_interval=100000 --eval_batches=2
    grep -E "^resuming|^step 620" "$OUT/small_resume.log" >> "$OUT/summary.txt"
else
    note "(b2) skipped: (b) saved no checkpoint (it saves at its last step only)"
fi

# (c) the tiny pipeline end to end on the GPU
rm -rf /tmp/tiny_gpu
part 400 15 tiny.log python pipeline.py --device=cuda --out_dir=/tmp/tiny_gpu
if [ -f /tmp/tiny_gpu/report.json ]; then
    cp /tmp/tiny_gpu/report.json "$OUT/tiny_report.json"
else  # out of time: the stages that finished
    python - > "$OUT/tiny_report.json" <<'PY'
import glob, json, os
print(json.dumps({os.path.basename(os.path.dirname(p)): json.load(open(p))
                  for p in sorted(glob.glob("/tmp/tiny_gpu/*/stage.json"))}, indent=1))
PY
fi
python - >> "$OUT/summary.txt" 2>&1 <<'PY'
import json, os
r = json.load(open(os.path.join(os.environ["OUT"], "tiny_report.json")))
stages = r.get("stages", r)
print("tiny stages (s):", {k: v.get("seconds") for k, v in stages.items()}, "total", r.get("total_seconds"))
print("tiny pretrain:", {k: stages.get("pretrain", {}).get(k) for k in ("val_loss", "tokens_per_s", "mfu")})
if "eval" in r:
    print("tiny eval prompt_strict:", {m: {s: r["eval"][m][s]["prompt_strict"] for s in r["eval"][m]} for m in r["eval"]})
PY

wait "$DATA_PID"  # ends by BUDGET - 25 s at the latest (its own timeout)
grep -E "seconds|tokenizer:|tokens:" "$OUT/small_data.log" >> "$OUT/summary.txt"
note "done"
