"""
The plumbing every training script shares: device and DDP set-up, the learning-rate
schedule, AdamW parameter groups, a JSONL metrics log, Ctrl-C handling and the NaN
guard. The training loops themselves stay in the scripts, in plain sight.
"""

import contextlib
import datetime
import functools
import json
import math
import os
import re
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from minift.formats import write_text


# ---------------------------------------------------------------------- devices and DDP
@dataclass
class Runtime:
    device: str          # "cuda:0", "mps", "cpu"
    device_type: str     # "cuda", "mps", "cpu" (what autocast wants)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self):
        return self.world_size > 1

    @property
    def master(self):
        """Only rank 0 writes logs and checkpoints and shows a progress bar."""
        return self.rank == 0

    def autocast(self, dtype="bfloat16"):
        """bf16 autocast: matmuls run in bf16 while weights and the optimizer stay fp32.
        bf16 keeps fp32's exponent range, so it needs no loss scaler (unlike fp16).
        Only where the hardware multiplies bf16 (`multiplies_bf16`): on NVIDIA GPUs since
        Ampere the tensor cores do; on a CPU with AMX (Intel Xeon since Sapphire Rapids) or
        AVX512-BF16's dot products (AMD since Zen 4, Intel since Cooper Lake) the tiny model's
        training steps run faster too, with attention kept in fp32 (minift.model.attention)
        and batches padded to few shapes (minift.model.PAD_MULTIPLE; FINDINGS.md, "Speed and
        precision"). Elsewhere (older GPUs such as the T4, other CPUs, MPS) bf16 has no units
        to run on, and we run in fp32; dtype="float32" turns autocast off everywhere. fp16 is
        not offered: its narrow exponent range needs a loss scaler (torch.amp.GradScaler) in
        every training loop."""
        if dtype == "bfloat16" and multiplies_bf16(self.device_type):
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def host_reads(step, cfg, stopping):
    """Whether a training step's loss is read on the host: at log and evaluation intervals,
    the last step, and before a Ctrl-C save. Reading a GPU number makes the host wait for the
    GPU, which then idles while the host prepares the next step (nanoGPT reads at log steps
    too); the NaN guard looks then, still before any update that a checkpoint would keep."""
    done = step + 1
    return done % cfg.log_interval == 0 or done % cfg.eval_interval == 0 or done == cfg.max_steps or stopping


@functools.cache  # the answer never changes, and Muon asks at every step
def multiplies_bf16(device_type):
    """Whether this machine's `device_type` ("cuda", "cpu", "mps") multiplies bf16 in
    hardware: an NVIDIA GPU of compute capability 8 or more (Ampere on; ROCm GPUs count too),
    or a CPU with Intel AMX's tile unit or AVX512-BF16's dot products. PyTorch's CPU checks
    are private, so a version without them counts as no. MPS counts as no: we run it in fp32."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return any(getattr(torch.cpu, check, lambda: False)()
                   for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


# The devices --device takes (every script's config checks it; pick_device again, for the benches)
DEVICE, DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?"), "auto, cpu, mps, cuda or cuda:N"


def pick_device(device="auto"):
    """The device for "auto": cuda if this machine has one, else mps (Apple), else cpu. One
    that this machine lacks is refused here, in one line, not at the first tensor moved to it."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if not DEVICE.fullmatch(device):   # the scripts' configs check it too; the benches' options do not
        raise ValueError(f"--device={device} is not a device; expected {DEVICES}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            if not count:
                cpu_build = not (torch.version.cuda or torch.version.hip)   # ROCm's GPUs are cuda here too
                have = "this PyTorch sees no CUDA GPU" + (" (a CPU build)" if cpu_build else "")
            else:
                have = "this machine's one GPU is cuda:0" if count == 1 else f"its GPUs are cuda:0 to cuda:{count - 1}"
            raise ValueError(f"--device={device}: {have}; use --device=auto or --device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device=mps: this PyTorch sees no Apple GPU (MPS); use --device=auto or --device=cpu")
    return device


def setup_runtime(device="auto", seed=1337):
    """Pick the device, and join the process group when launched by torchrun
    (which sets RANK, LOCAL_RANK and WORLD_SIZE). Each rank gets its own global seed
    (seed + rank), so dropout differs between ranks; the batches come from each script's own
    generator, which it seeds per rank too."""
    device = pick_device(device)
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in
                               (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if world > 1:
        # NCCL between GPUs; gloo on the CPU (the DDP test runs 2 CPU processes).
        backend = "nccl" if device.startswith("cuda") else "gloo"
        # Rank 0 evaluates and saves alone while the others wait in the next collective;
        # NCCL's watchdog would abort them all after its default 10 minutes of waiting.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=1))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    torch.manual_seed(seed + rank)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if rank == 0 and not multiplies_bf16("cuda"):
            print(f"{torch.cuda.get_device_name()} has no bf16 units (compute capability < 8): "
                  "running in fp32")
    return Runtime(device, device.split(":")[0], rank, local_rank, world)


def cleanup_runtime(rt):
    if rt.ddp:
        # Wait until every rank is done (rank 0 may still be evaluating or saving) before
        # tearing down. Without the barrier, a rank that leaves first closes its gloo
        # connections under a peer that still uses them, and that peer can abort at exit
        # ("terminate called without an active exception"; seen in tests/test_ppo.py's DDP run).
        dist.barrier()
        dist.destroy_process_group()


def compile_and_wrap(model, rt, compile=False):
    """The module the training loop calls: torch.compile'd when asked (worth it on a GPU, slow
    to start on a CPU), then, under torchrun, wrapped in DistributedDataParallel, which
    all-reduces the gradients in backward. Keep the plain model for saving and evaluation."""
    if compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    return model


def all_reduce_mean(value, rt):
    """Average a float over the ranks (for logging), a no-op without DDP."""
    if not rt.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world_size


def average_gradients(params, rt):
    """DDP by hand: after backward each rank holds the gradient of its own minibatch; the
    average over ranks is the gradient of the global batch, and with it the identical Adam
    step keeps the replicas identical (they start so: every rank loads the same checkpoint).
    The other training scripts wrap their model in DDP instead, which does this in buckets
    during backward. train_ppo.py's policy also generates and is evaluated, and policy and critic
    share one backward, so one explicit loop is simpler than two wrappers and their `.module`s."""
    if rt.ddp:
        for p in params:
            if p.grad is not None:      # the same on every rank: they all ran the same graph
                dist.all_reduce(p.grad)     # a sum over ranks, in place
                p.grad /= rt.world_size


# ---------------------------------------------------------------------- optimisation
def lr_at(step, max_lr, min_lr, warmup_steps, decay_steps):
    """Linear warmup for `warmup_steps`, then cosine decay to min_lr at `decay_steps`,
    then flat. Warmup keeps Adam's early, badly estimated second moments from taking
    huge steps; the cosine tail anneals the noise at the end (nanoGPT, Chinchilla)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# Newton-Schulz coefficients (a, b, c) of the quintic x -> a x + b x^3 + c x^5, chosen by
# Jordan et al. to push small singular values up fast (the slope at 0 is a = 3.4); they
# leave singular values between about 0.7 and 1.2, most of them below 1, instead of exactly
# 1, which does not hurt training. After our 3, the smallest stay smaller (one at 1% of
# the Frobenius norm reaches about 0.4). PyTorch's torch.optim.Muon uses the same ones.
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_NS_STEPS = 3  # iterations per update (PyTorch's default is 5; see make_optimizer)


def product_dtype(device):
    """The precision for Muon's products on `device`: bf16 where the hardware multiplies it
    (`multiplies_bf16`), fp32 elsewhere: there PyTorch emulates bf16 products in software,
    which is slower than its native fp32 ones (FINDINGS.md, "Speed and precision", Muon on a
    CPU without bf16 units)."""
    return torch.bfloat16 if multiplies_bf16(torch.device(device).type) else torch.float32


def orthogonalize(updates, steps=MUON_NS_STEPS, dtype=torch.bfloat16):
    """Push a stack of matrices (n, rows, cols), rows <= cols, toward the nearest
    (semi-)orthogonal ones: same singular vectors, singular values near 1.

    Dividing by the Frobenius norm puts every singular value in [0, 1]; each iteration then
    applies the odd polynomial a x + b x^3 + c x^5 to all singular values at once, since
    (X X^T) X multiplies by them twice more. rows <= cols keeps the Gram matrix X X^T at its
    smaller size. The products run in `dtype`, bf16 as in Jordan et al.'s and PyTorch's Muon:
    the result is an approximation anyway, and bf16 products are fast on GPUs and on CPUs
    with AMX or AVX512-BF16 (Muon picks fp32 elsewhere: product_dtype). One batched product
    per shape, instead of torch.optim.Muon's one per matrix: the tiny model's 16 matrices are
    small, and each product call has a fixed cost that fewer, larger calls pay less often
    (FINDINGS.md, "Speed and precision", Muon's cost)."""
    a, b, c = MUON_NS_COEFFICIENTS
    x = updates.to(dtype)
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.mT                                         # (n, rows, rows)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)                   # a X + (b G + c G^2) X
    return x


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"):
    momentum SGD whose update for each weight matrix is orthogonalized before it is applied.

    A gradient matrix is dominated by a few directions (its top singular vectors); SGD and
    Adam move the weights mostly along those. Orthogonalizing the update gives every
    direction a step of about the same size, so the rarer directions learn too. Per step,
    for each matrix W with gradient G:
        B <- momentum * B + (1 - momentum) * G                (momentum buffer)
        U <- orthogonalize((1 - momentum) * G + momentum * B)  (Nesterov look-ahead)
        W <- W * (1 - lr * weight_decay) - lr * 0.2 * sqrt(max(rows, cols)) * U
    The factor 0.2 sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is Scalable for LLM
    Training") gives the update the root-mean-square size of a typical AdamW update, so the
    learning rate tuned for AdamW serves Muon too. This is PyTorch's torch.optim.Muon with
    adjust_lr_fn="match_rms_adamw" and ns_steps=MUON_NS_STEPS; ours orthogonalizes all
    matrices of one shape in a single batched product (tests/test_training.py checks the two
    agree). `ns_dtype`, the precision of the products, is product_dtype(the parameters'
    device) unless given."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.95, ns_steps=MUON_NS_STEPS, ns_dtype=None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            by_shape = {}  # (rows, cols) with rows <= cols -> [(param, update laid out that way)]
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum)
                if update.size(0) > update.size(1):
                    update = update.mT  # orthogonalizing U^T and transposing back gives the same
                by_shape.setdefault(tuple(update.shape), []).append((p, update))
            for (_, cols), members in by_shape.items():  # cols = max(rows, cols) of the matrix
                stack = torch.stack([u for _, u in members])
                ortho = orthogonalize(stack, group["ns_steps"], self.ns_dtype or product_dtype(stack.device))
                scale = 0.2 * math.sqrt(cols)
                for (p, _), o in zip(members, ortho):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(o.mT if p.size(0) > p.size(1) else o, alpha=-lr * scale)


def make_optimizer(model, lr, weight_decay, kind="adamw", betas=(0.9, 0.95), eps=1e-8, device_type="cpu"):
    """AdamW, or Muon for the transformer blocks' weight matrices with AdamW for the rest.

    AdamW decays matrices (Linear weights, embeddings) only. Decaying biases and LayerNorm
    gains just pulls them toward 0 for no regularising benefit.

    Muon (kind="muon", the class above) is meant for hidden layers only: the embedding (tied
    to the LM head here), gains and biases stay with AdamW. It runs 3 Newton-Schulz
    iterations, not PyTorch's default 5: each iteration costs the same, and the less orthogonal
    update that three leave did not lower SFT's score (FINDINGS.md, "SFT training", Muon)."""
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = []
    if kind == "muon":
        hidden = [p for name, p in model.named_parameters()
                  if p.requires_grad and p.dim() == 2 and ".blocks." in f".{name}"]
    elif kind != "adamw":
        raise ValueError(f"unknown optimizer {kind!r}: use adamw or muon")
    in_muon = {id(p) for p in hidden}
    rest = [p for p in params if id(p) not in in_muon]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # One fused kernel for the whole update, on GPU and on CPU. Without it PyTorch's CPU
    # default loops over the tensors one by one, which adds up over SFT's 4,800 small steps.
    fused = device_type in ("cuda", "cpu")
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if not hidden:
        return adamw
    muon = Muon(hidden, lr=lr, weight_decay=weight_decay)
    return OptimizerPair(muon, adamw)


class OptimizerPair:
    """Two optimizers over disjoint parameters, used as one: the training loops call
    step(), zero_grad(), state_dict() and load_state_dict(), and set_lr() walks
    param_groups, so the learning-rate schedule reaches both."""

    def __init__(self, first, second):
        self.optimizers = (first, second)

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"pair": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state):
        """A single optimizer's state has no "pair"; resume_training turns that KeyError into
        an error that names the checkpoint and the optimizer it was trained with."""
        for opt, s in zip(self.optimizers, state["pair"]):
            opt.load_state_dict(s)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(loss, step, ckpt_path, what="loss"):
    """A NaN/inf loss (or gradient norm: `what`) poisons every weight it touches; stop before the
    optimizer step so the last checkpoint on disk stays good."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"{what} is {loss} at step {step}; stopping without saving, so {ckpt_path} keeps "
            f"the last good weights. Try a lower --learning_rate or a smaller --grad_clip.")


def read_step(step_loss, grad_norm, step, ckpt_path):
    """A step's loss and gradient norm read on the host, as floats, through the NaN guard. The
    loss is this rank's own; the gradient is every rank's (DDP averaged it in backward), so a
    NaN on any rank stops them all here, at the same step."""
    step_loss, grad_norm = float(step_loss), float(grad_norm)
    check_finite(step_loss, step, ckpt_path)
    check_finite(grad_norm, step, ckpt_path, "gradient norm")
    return step_loss, grad_norm


# ---------------------------------------------------------------------- throughput
# Dense bf16 tensor-core peak of a GPU, FLOP/s, without sparsity (the vendors' data sheets):
# the denominator of model FLOPs utilisation (MFU). Matched in this order against
# torch.cuda.get_device_name(), so "H100 PCIe" is tried before the SXM part's "H100", and "L40"
# before "L4".
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
                   "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "L4": 121e12}


def peak_bf16_flops(device):
    """This GPU's bf16 peak from PEAK_BF16_FLOPS, or None (a CPU, or a GPU not in the table)."""
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def flops_per_token(n_params, n_layer, n_head, head_dim, seq_len):
    """Training FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's estimate_mfu):
    6 N for the forward and backward products through N weights (2 N forward, 4 N backward),
    plus 12 L H Q T for attention's scores and weighted sums (L layers of H heads of size Q,
    T positions; counted in full, though causal attention skips half)."""
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len


# ---------------------------------------------------------------------- bookkeeping
class MetricsLog:
    """Appends one JSON object per line to <out_dir>/metrics.jsonl: easy to tail, to
    load with pandas, and safe to append to across resumed runs."""

    def __init__(self, path, enabled=True, step=0):
        """`step`: where the run starts (PPO's and GRPO's iteration). A run resumed at step s keeps
        the records up to s and drops later ones: a run that died after its last save had logged
        them, and this run logs those steps again. A run from step 0 starts a new log."""
        self.path, self.enabled = path, enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    kept = [line for line in f if step > 0 and logged_by(line, step)]
                write_text(path, "".join(kept))

    def log(self, **record):
        if self.enabled:
            record = {"time": round(time.time(), 3), **record}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def logged_by(line, step):
    """Whether a metrics.jsonl line is a whole record of a step at or before `step` (a process
    killed mid-write can leave half a line, which no reader could parse)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    at = record.get("step", record.get("iteration", 0)) if isinstance(record, dict) else None
    return line.endswith("\n") and isinstance(at, (int, float)) and at <= step


class Interrupted(Exception):
    """Ctrl-C stopped a run early, after it saved its checkpoint. An exception, not a normal
    return, so that nothing downstream (pipeline.py's stage markers) takes the run as finished."""


class StopRequest:
    """Turns Ctrl-C (SIGINT) into a flag the training loop checks after each step, so an
    interrupted run saves a checkpoint and exits cleanly instead of dying mid-step.
    A second Ctrl-C exits at once."""

    def __init__(self, rt=None):
        self.rt = rt
        self.requested = False

    def agreed(self):
        """Whether any rank has been asked to stop. Under DDP every rank must stop after the
        same step: Ctrl-C reaches each process at a slightly different moment, and a rank that
        went on alone would wait forever in its next all-reduce. So the flags are combined
        (a max over ranks: one tiny all-reduce a step); without DDP this is the flag itself."""
        if self.rt is not None and self.rt.ddp:
            flag = torch.tensor([float(self.requested)], device=self.rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.rt is None or self.rt.master:   # every process gets Ctrl-C; one says so
            print("\nCtrl-C: saving a checkpoint after this step (press again to quit now)", flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False

    def raise_if_requested(self, what):
        """After the loop and the last save: a stopped run ends in Interrupted (`what` says
        where it stopped), a finished one goes on."""
        if self.requested:
            raise Interrupted(f"{what}; run the same command again to resume")


def rng_state(generator):
    """The random state a resumed run needs to continue exactly (all plain tensors): torch's
    global CPU generator and the script's own. A GPU's global generator is not saved; it
    only feeds dropout, which every preset turns off."""
    return {"torch": torch.get_rng_state(), "batches": generator.get_state()}


def set_rng_state(state, generator):
    # A checkpoint loaded onto a GPU (map_location) brings these byte tensors with it, and
    # generators take their state only as CPU tensors.
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["batches"].cpu())
