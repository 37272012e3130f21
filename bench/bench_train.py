"""Training speed of minift's GPT beside a plain GPT-2 of the same size, on this machine.

    python bench/bench_train.py                       # a GPU: both GPU configs below; a CPU: the tiny preset's
    python bench/bench_train.py --config=gpt2-124m    # one config (gpt2-124m, small, tiny, cpu-smoke)
    python bench/bench_train.py --config=cpu-smoke    # a few seconds on the CPU (tests/test_bench_train.py runs it)
    python bench/bench_train.py --against=e5c8e74     # and minift's GPT at that git revision, interleaved
    python bench/bench_train.py --bf16                # and fp32 against bf16 autocast, as a ratio
    python bench/bench_train.py --muon                # and AdamW against Muon (--optimizer=muon), as a ratio
    python bench/bench_train.py --saved               # and the activations kept for backward, both models
    python bench/bench_train.py --json=results.json   # also write the figures as JSON

The side-by-side times the same step for both models: forward, loss over every position, backward,
gradient clipping and a fused AdamW step (minift.training.make_optimizer), under the training
scripts' autocast (bf16 on a GPU and on CPUs with bf16 products), torch.compile on a GPU
(--compile=0 turns it off), on random tokens, after warm-up steps. It prints tokens/s, model FLOPs
utilisation (MFU: minift.training.flops_per_token against the GPU's bf16 peak,
minift.training.PEAK_BF16_FLOPS), a GPU's peak allocated memory per model (on a CPU both models
share one process, whose resident peak says nothing about either: --saved counts there), and
minift's ratio to GPT-2. The plain GPT-2 (PlainGPT2 below) is
nanoGPT's model: learned positions, the output layer on every position.

--against, --bf16 and --muon time the two ways as A, B, A, B, so that a machine that slows down
or speeds up mid-run touches both alike, and print the ratio. (On a GPU, --against builds,
times and frees one model after the other instead, to keep one in memory at a time.) --bf16,
--muon and --saved run on the last config named, and only the side-by-side goes into --json.

--muon: Muon orthogonalises each block matrix's update with three Newton-Schulz
iterations, a fixed cost per step that does not shrink with the batch; our batched Muon
makes one product per shape instead of one per matrix (FINDINGS.md, "Speed and precision").
Both arms run without autocast (fp32; TF32 products on a GPU, and Muon's own products in bf16
where the hardware multiplies bf16), as FINDINGS.md's figure was measured; under bf16
autocast the step is faster, so Muon's fixed cost is a larger share of it.

--saved: the bytes of activations autograd keeps from one forward pass for the backward pass
(fp32, eager, parameters not counted), minift's GPT against the plain GPT-2. With the weights
and the optimizer's state, they are most of a training step's peak memory, and unlike peak
memory they can be counted on any device.

--bf16: a CPU with AMX (Intel Sapphire Rapids and later) or AVX512-BF16 multiplies bf16
matrices in hardware. --bf16 times minift's GPT with no autocast (fp32) against bf16 autocast;
the side-by-side's figures are under the training scripts' autocast, which uses bf16 where
the CPU has either (minift.training.Runtime.autocast), with attention kept in fp32 by the
model (minift.model.attention); FINDINGS.md, "Speed and precision", has the ratios.
"""
import contextlib
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minift.config import FALSE_WORDS, TRUE_WORDS, run  # noqa: E402
from minift.formats import write_json  # noqa: E402
from minift.model import GPT, GPTConfig, attention  # noqa: E402
from minift.training import (Runtime, flops_per_token, make_optimizer, peak_bf16_flops,  # noqa: E402
                             pick_device)

# name: (model config, sequences per step). gpt2-124m is GPT-2 small with nanoGPT's vocabulary
# padded to 50,304; small and tiny are train_pretrain.py's presets of those names. The tiny
# vocabulary is its pipeline's (2,048 + 5 special tokens); the small one is the small preset's
# --vocab_size setting, a round stand-in (on the generated corpus BPE stops near 3,800 ids, so
# the small pipeline's own output layer is smaller; bench/gpu_check.sh says the same).
CONFIGS = {
    "gpt2-124m": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304), 16),
    "small": (dict(n_layer=8, n_head=8, n_embd=512, block_size=512, vocab_size=8192), 64),
    "tiny": (dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=2053), 4),
    "cpu-smoke": (dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=97), 2),
}
GPU_CONFIGS = ("gpt2-124m", "small")


class PlainGPT2(nn.Module):
    """GPT-2 as nanoGPT writes it (Radford et al. 2019): learned position embeddings, pre-LayerNorm
    blocks, tied output layer run on every position, loss over every target that is not -1.
    Attention goes through minift.model.attention, as minift's does: under CPU autocast both keep
    it in fp32, so the ratio compares the models, not PyTorch's slow bf16 CPU attention backward
    (on a GPU it is the same fused kernel either way)."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.config = config
        self.wte, self.wpe = nn.Embedding(config.vocab_size, C), nn.Embedding(config.block_size, C)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(C, bias=False), c_attn=nn.Linear(C, 3 * C, bias=False),
            attn_proj=nn.Linear(C, C, bias=False), ln_2=nn.LayerNorm(C, bias=False),
            c_fc=nn.Linear(C, 4 * C, bias=False), mlp_proj=nn.Linear(4 * C, C, bias=False)))
            for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, bias=False)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.dim() == 2 else None

    def num_params(self):
        """Weights whose products run for each token: all but the position table."""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx, targets):
        B, T = idx.shape
        H, C = self.config.n_head, self.config.n_embd
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b.c_attn(b.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = attention(q, k, v)
            x = x + b.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            x = x + b.mlp_proj(F.gelu(b.c_fc(b.ln_2(x))))
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def gpt_at_revision(revision):
    """minift's GPT class as it was at a git revision: its model.py, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:minift/model.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"model_{revision}.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"model_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT


class Bench:
    """One model at one config: build, compile, warm up, then time(steps) as often as asked."""

    def __init__(self, cls, name, config, batch_size, device, dtype="bfloat16", compile=False,
                 optimizer="adamw", autocast=None):
        torch.manual_seed(0)
        self.name, self.device = name, device
        self.gpu = device.startswith("cuda")
        if self.gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        self.base_memory = torch.cuda.memory_allocated(device) if self.gpu else 0
        model_config = GPTConfig(**config)
        self.model = cls(model_config).to(device)
        self.n_params = self.model.num_params()
        self.flops_per_token = flops_per_token(self.n_params, model_config.n_layer, model_config.n_head,
                                               model_config.n_embd // model_config.n_head, model_config.block_size)
        self.opt = make_optimizer(self.model, 6e-4, 0.1, optimizer, device_type=device.split(":")[0])
        self.step_fn = torch.compile(self.model) if compile else self.model
        self.autocast = autocast or functools.partial(Runtime(device, device.split(":")[0]).autocast, dtype)
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model_config.vocab_size, (batch_size, model_config.block_size + 1),
                               generator=generator).to(device)
        self.x, self.y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.tokens = batch_size * model_config.block_size
        self.seconds = []

    def step(self):
        with self.autocast():
            _, loss = self.step_fn(self.x, self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sync(self):
        if self.gpu:
            torch.cuda.synchronize(self.device)

    def warm_up(self, steps):
        for _ in range(steps):
            self.step()
        self.sync()
        return self

    def time(self, steps):
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        self.seconds.append((time.perf_counter() - t0) / steps)
        return self.seconds[-1]

    def result(self):
        dt = sum(self.seconds) / len(self.seconds)
        peak = peak_bf16_flops(self.device)
        memory = torch.cuda.max_memory_allocated(self.device) - self.base_memory if self.gpu else None
        return {"model": self.name, "params": self.n_params, "ms_per_step": 1000 * dt, "tokens_per_s": self.tokens / dt,
                "mfu": self.tokens / dt * self.flops_per_token / peak if peak else None, "peak_bytes": memory}

    def release(self):
        """Free this model's memory before the next one is measured."""
        del self.model, self.step_fn, self.opt, self.x, self.y
        if self.gpu:
            torch.cuda.empty_cache()


def print_result(r):
    mfu = f"MFU {100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "MFU n/a"
    peak = f"peak {r['peak_bytes'] / 1e9:6.2f} GB" if r["peak_bytes"] is not None else "peak n/a"
    print(f"  {r['model']:<16} {r['params'] / 1e6:8.2f}M params {r['ms_per_step']:9.1f} ms/step "
          f"{r['tokens_per_s']:>12,.0f} tokens/s  {mfu}  {peak}", flush=True)


def side_by_side(name, device, compile, steps, warmup, against=None):
    """minift's GPT and the plain GPT-2 at one config (and minift's GPT at `against`), two timed
    rounds each."""
    config, batch_size = CONFIGS[name]
    print(f"config {name}: {config['n_layer']} x {config['n_embd']} ({config['n_head']} heads), "
          f"T {config['block_size']}, vocab {config['vocab_size']}, batch {batch_size}, {device}, "
          f"{'compiled' if compile else 'eager'}, {torch.get_num_threads()} threads", flush=True)
    models = [(GPT, "minift GPT"), (PlainGPT2, "plain GPT-2")]
    if against:
        models.append((gpt_at_revision(against), f"GPT @ {against}"))
    results = []
    if device.startswith("cuda"):  # one model at a time, so that each has the GPU's memory to itself
        for cls, label in models:
            bench = Bench(cls, label, config, batch_size, device, compile=compile).warm_up(warmup)
            bench.time(steps)
            bench.time(steps)
            results.append(bench.result())
            bench.release()
            print_result(results[-1])
    else:  # interleaved, A, B, A, B: a shared CPU's speed drifts
        benches = [Bench(cls, label, config, batch_size, device, compile=compile).warm_up(warmup)
                   for cls, label in models]
        for _ in range(2):
            for bench in benches:
                bench.time(steps)
        for bench in benches:
            results.append(bench.result())
            print_result(results[-1])
    ours, plain = results[0], results[1]
    memory_ratio = ours["peak_bytes"] / plain["peak_bytes"] if ours["peak_bytes"] is not None else None
    print(f"  minift / GPT-2: {ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s"
          + (f", {memory_ratio:.2f}x peak memory" if memory_ratio is not None else "")
          + (f"; minift / minift @ {against}: {ours['tokens_per_s'] / results[2]['tokens_per_s']:.2f}x tokens/s"
             if against else ""), flush=True)
    return {"config": name, "device": device, "compile": compile, "batch_size": batch_size, **config,
            "results": results, "speed_ratio": ours["tokens_per_s"] / plain["tokens_per_s"],
            "memory_ratio": memory_ratio}


def interleaved(name_a, bench_a, name_b, bench_b, steps):
    """Time A and B as A, B, A, B and print both and the ratio."""
    for _ in range(2):
        bench_a.time(steps)
        bench_b.time(steps)
    a, b = bench_a.seconds, bench_b.seconds
    print(f"{name_a} {a[0] * 1000:.0f} / {a[1] * 1000:.0f} ms/step, {name_b} {b[0] * 1000:.0f} / "
          f"{b[1] * 1000:.0f} ms/step: {name_b} is {sum(a) / sum(b):.2f}x as fast", flush=True)


def saved_activation_bytes(cls, config, batch_size, device):
    """Bytes of the tensors autograd keeps from one fp32 forward pass for the backward pass, each
    storage counted once (a view keeps all of its storage alive), parameters left out."""
    torch.manual_seed(0)
    model = cls(GPTConfig(**config)).to(device)
    tokens = torch.randint(0, config["vocab_size"], (2, batch_size, config["block_size"]), device=device)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens[0], tokens[1])
    return sum(kept.values())


OPTIONS = ("config", "device", "compile", "steps", "warmup", "against", "bf16", "muon", "saved", "json")


def main(args):
    opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "1") for a in args)
    unknown = [a for a in args if not a.startswith("--") or a[2:].split("=", 1)[0] not in OPTIONS]
    if unknown:
        raise SystemExit(f"error: unknown option {unknown[0]}; the options are --{', --'.join(OPTIONS)} (--help)")
    if opts.get("config", "tiny") not in CONFIGS:
        raise SystemExit(f"error: --config={opts['config']}; choose from {', '.join(CONFIGS)}")
    for name, least in (("steps", 1), ("warmup", 0)):
        if name in opts and not (opts[name].isdigit() and int(opts[name]) >= least):
            raise SystemExit(f"error: --{name}={opts[name]}; expected a whole number, at least {least}")
    # the words the training scripts accept (minift.config): --compile=False must not compile
    for name in ("compile", "bf16", "muon", "saved"):
        if name in opts and opts[name].lower() not in TRUE_WORDS | FALSE_WORDS:
            raise SystemExit(f"error: --{name}={opts[name]}; expected one of "
                             f"{', '.join(sorted(TRUE_WORDS | FALSE_WORDS))}")
    flags = {name: opts.get(name, "0").lower() in TRUE_WORDS for name in ("bf16", "muon", "saved")}
    device = pick_device(opts.get("device", "auto"))
    gpu = device.startswith("cuda")
    names = [opts["config"]] if "config" in opts else (GPU_CONFIGS if gpu else ["tiny"])
    compile = opts.get("compile", "1" if gpu else "0").lower() in TRUE_WORDS
    steps = int(opts.get("steps", 20 if gpu else 10))
    warmup = int(opts.get("warmup", 5 if gpu else 3))
    if gpu:   # TF32 for fp32 products, as the training scripts set it (minift.training.setup_runtime)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(device)}, "
              f"bf16 peak {peak_bf16_flops(device) or 'unknown'} FLOP/s")
    reports = [side_by_side(name, device, compile, steps, warmup, opts.get("against")) for name in names]
    config, batch_size = CONFIGS[names[-1]]
    plain_fp32 = functools.partial(Bench, GPT, "", config, batch_size, device, compile=compile,
                                   autocast=contextlib.nullcontext)
    if flags["bf16"]:
        bf16 = functools.partial(torch.autocast, device.split(":")[0], dtype=torch.bfloat16)
        interleaved("fp32", plain_fp32().warm_up(warmup), "bf16 autocast",
                    Bench(GPT, "", config, batch_size, device, compile=compile, autocast=bf16).warm_up(warmup), steps)
    if flags["muon"]:
        interleaved("AdamW", plain_fp32().warm_up(warmup), "Muon", plain_fp32(optimizer="muon").warm_up(warmup), steps)
    if flags["saved"]:
        ours, plain = (saved_activation_bytes(cls, config, batch_size, device) for cls in (GPT, PlainGPT2))
        print(f"activations kept for backward (fp32, eager): minift GPT {ours / 1e6:.1f} MB, "
              f"plain GPT-2 {plain / 1e6:.1f} MB: {ours / plain:.3f}x", flush=True)
    if "json" in opts:
        write_json(opts["json"], reports)
    return reports


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    run(lambda: main(sys.argv[1:]))
