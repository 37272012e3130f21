"""The pretraining script end to end: loss goes down, exact resume, the NaN guard,
Ctrl-C, DDP on the CPU with gloo, and sampling from the result."""
import math
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sample
import train_pretrain
from conftest import ROOT, read_metrics, run_main
from minift.checkpoint import build_model, load_checkpoint
from minift.model import GPT, GPTConfig
from minift.training import NonFiniteLoss, Runtime

MICRO = ["--preset=micro", "--device=cpu"]


def losses(out_dir):
    return {m["step"]: m["loss"] for m in read_metrics(out_dir) if "loss" in m}


def test_resume_continues_exactly(corpus_dir, tmp_path):
    # with dropout, whose masks come from torch's global generator: the checkpoint restores it too
    common = MICRO + [f"--data_dir={corpus_dir}", "--max_steps=8", "--log_interval=1", "--eval_interval=100",
                      "--dropout=0.2"]
    full = str(tmp_path / "full")
    whole = train_pretrain.main(common + [f"--out_dir={full}"])
    # the untrained model's loss is where the curve starts: near ln(vocab), as logits start near 0
    n_vocab = load_checkpoint(os.path.join(full, "ckpt.pt"))["model_config"]["vocab_size"]
    assert abs(whole["val_loss_init"] - math.log(n_vocab)) < 0.2 and whole["val_loss"] < whole["val_loss_init"]
    split = str(tmp_path / "split")
    # stop at step 4 with the same schedule (decay_steps fixes the cosine), then resume to 8
    train_pretrain.main(common + [f"--out_dir={split}", "--max_steps=4", "--decay_steps=8"])
    assert load_checkpoint(os.path.join(split, "ckpt.pt"))["step"] == 4
    with pytest.raises(ValueError, match=r"--seed=2 \(it has 1337\)"):   # another seed is another run
        train_pretrain.main(common + [f"--out_dir={split}", "--seed=2"])
    with open(os.path.join(split, "metrics.jsonl"), "a") as log:   # as if it had died after its save
        log.write('{"step": 5, "loss": 9.9}\n')
    resumed = train_pretrain.main(common + [f"--out_dir={split}"])
    a, b = losses(full), losses(split)
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bit-for-bit identical
    # one log of the whole run: the untrained loss, then each step once (the dead run's step 5 gone)
    trained, evaluated = [(s, "loss") for s in range(1, 9)], [(s, "val_loss") for s in (0, 4, 8)]
    assert [(m["step"], "loss" if "loss" in m else "val_loss") for m in read_metrics(split)] == \
        evaluated[:1] + trained[:4] + evaluated[1:2] + trained[4:] + evaluated[2:]
    assert resumed["val_loss_init"] == whole["val_loss_init"]          # carried by the checkpoint
    # a finished run, started again, reports what it saved (a pipeline re-run after a Ctrl-C)
    again = train_pretrain.main(common + [f"--out_dir={full}"])
    assert again["step"] == 8 and again["val_loss"] == whole["val_loss"]


@pytest.mark.parametrize("poisoned", ["loss", "gradient norm"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus_dir, tmp_path, monkeypatch, poisoned):
    """A NaN loss stops training before its update. So does a NaN gradient under a finite loss:
    what this rank receives when another DDP rank's loss is NaN, since DDP averages gradients."""
    out = str(tmp_path / "nan")
    args = MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--eval_interval=3"]
    train_pretrain.main(args + ["--max_steps=3"])
    good = load_checkpoint(os.path.join(out, "ckpt.pt"))
    real_ce, real_clip = torch.nn.functional.cross_entropy, torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def poisoned_loss(*a, **k):  # the 2nd training step after resuming produces a NaN loss
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    def poisoned_gradient(params, *a, **k):  # ... or NaN gradients under a finite loss
        params = list(params)
        calls["n"] += 1
        if calls["n"] == 2:
            for p in params:
                p.grad.fill_(float("nan"))
        return real_clip(params, *a, **k)
    if poisoned == "loss":
        monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned_loss)
    else:
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned_gradient)
    with pytest.raises(NonFiniteLoss, match=f"{poisoned} is nan at step 4"):
        train_pretrain.main(args + ["--max_steps=10"])
    after = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert after["step"] == 3
    assert all(torch.equal(good["model"][k], after["model"][k]) for k in good["model"])


def test_get_batch_reads_windows_and_their_shift():
    data = np.arange(1000, dtype=np.uint16)
    x, y = train_pretrain.get_batch(data, 3, 16, torch.Generator().manual_seed(0), "cpu")
    starts = torch.randint(1000 - 16 - 1, (3,), generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.int64 and x.shape == y.shape == (3, 16)
    assert torch.equal(x, starts[:, None] + torch.arange(16)) and torch.equal(y, x + 1)


class HostReads(TorchDispatchMode):
    """Records the training step during which the host reads a tensor's value: item(), float(),
    bool() and tolist() all reach aten._local_scalar_dense, and on a GPU each one waits for the
    GPU to finish its queue. `step` is advanced by the training loop's set_lr (patched below)."""

    def __init__(self):
        super().__init__()
        self.step, self.reads = -1, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(self.step)
        return func(*args, **(kwargs or {}))


def test_host_reads_values_only_at_log_intervals(corpus_dir, tmp_path, monkeypatch):
    reads = HostReads()
    real_set_lr = train_pretrain.set_lr

    def set_lr(optimizer, lr):  # called once at the start of every step
        reads.step += 1
        real_set_lr(optimizer, lr)
    monkeypatch.setattr(train_pretrain, "set_lr", set_lr)
    with reads:
        train_pretrain.main(MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={tmp_path / 'reads'}", "--max_steps=12",
                                     "--log_interval=4", "--eval_interval=12"])
    assert reads.step == 11
    assert {s for s in reads.reads if s >= 0} == {3, 7, 11}  # steps 4, 8 and 12 log; 12 also evaluates


def run_script(args, **kw):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=240, **kw)


def test_end_to_end_loss_goes_down_then_sample(corpus_dir, tmp_path, capsys):
    out = str(tmp_path / "e2e")
    run_main(train_pretrain, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--max_steps=40",
                                      "--learning_rate=1e-2"])
    curve = losses(out)
    first, last = curve[min(curve)], curve[max(curve)]
    assert last < first - 1.0, curve
    capsys.readouterr()
    # The prompt, then a continuation. A 40-step model may end its document at once (it samples
    # <|endoftext|>), so each of three seeds must print the prompt, and one must go on.
    continued = []
    for seed in range(3):
        run_main(sample, [f"--ckpt={out}/ckpt.pt", "--prompt=Once upon a time", "--max_new_tokens=20",
                          f"--seed={seed}"])
        printed = capsys.readouterr().out
        assert printed.startswith("Once upon a time"), printed
        continued.append(len(printed.rstrip()) > len("Once upon a time"))
    assert any(continued)


def test_ctrl_c_saves_a_checkpoint(corpus_dir, tmp_path):
    out = str(tmp_path / "sigint")
    proc = subprocess.Popen([sys.executable, "train_pretrain.py"] + MICRO +
                            [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--max_steps=100000",
                             "--eval_interval=100000"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and len(read_metrics(out)) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output  # 130: stopped by SIGINT, so nothing takes the run as finished
    step = load_checkpoint(os.path.join(out, "ckpt.pt"))["step"]
    assert 3 <= step < 100000 and "Traceback" not in output
    assert (f"interrupted: saved {out}/ckpt.pt at step {step} of 100000; run the same command again to resume"
            in output.splitlines())


def test_a_ctrl_c_after_an_unread_nan_step_keeps_the_last_good_checkpoint(corpus_dir, tmp_path, monkeypatch):
    """A Ctrl-C that comes after host_reads decided not to read a step leaves that step's loss
    unchecked; if it was NaN, its weights must not be what the Ctrl-C save keeps."""
    out = str(tmp_path / "o")
    args = MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--eval_batches=1", "--log_interval=50",
                    "--eval_interval=2", "--dtype=float32"]
    run_main(train_pretrain, args + ["--max_steps=2"])
    real_host_reads, real_cross_entropy = train_pretrain.host_reads, torch.nn.functional.cross_entropy

    def then_ctrl_c(step, cfg, stopping):   # not read here, and then the user presses Ctrl-C
        reading = real_host_reads(step, cfg, stopping)
        os.kill(os.getpid(), signal.SIGINT)
        return reading
    monkeypatch.setattr(train_pretrain, "host_reads", then_ctrl_c)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real_cross_entropy(*a, **k) * math.nan)
    with pytest.raises(NonFiniteLoss, match="at step 2"):
        train_pretrain.main(args + ["--max_steps=100"])
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 2


def test_ddp_two_cpu_processes_with_gloo(corpus_dir, tmp_path):
    """Two ranks train on different batches; DDP's all-reduced gradients keep their models identical."""
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    r = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/rank_weights.py",
                    out, "train_pretrain.py"] + MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--max_steps=6"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["step"] == 6
    # only rank 0 writes the log: one line per step, not two
    assert len([m for m in read_metrics(out) if "loss" in m]) == 6
    # both ranks end with the same weights, the ones rank 0 saved
    rank0, rank1 = (torch.load(os.path.join(out, f"rank{r}.pt")) for r in (0, 1))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    saved = list(build_model(ckpt).parameters())
    assert all(any(a.shape == b.shape and torch.equal(a, b) for b in saved) for a in rank0)


def test_gradient_accumulation_averages_its_micro_batches(corpus_dir, tmp_path, monkeypatch):
    """k micro-batches of the same data give the gradient and loss of one: each micro-batch's
    loss is divided by k before backward (otherwise the gradient would be k times too large)."""
    real, first = train_pretrain.get_batch, {}

    def the_same_batch(*args):
        return first.setdefault("xy", real(*args))
    monkeypatch.setattr(train_pretrain, "get_batch", the_same_batch)
    logged = []
    for k in (1, 3):
        run_main(train_pretrain, ["--preset=micro", "--device=cpu", "--dtype=float32", f"--data_dir={corpus_dir}",
                                  f"--out_dir={tmp_path}/k{k}", "--max_steps=1", "--eval_batches=1", f"--grad_accum={k}"])
        logged.append(next(m for m in read_metrics(tmp_path / f"k{k}") if "grad_norm" in m))
    assert logged[1]["grad_norm"] == pytest.approx(logged[0]["grad_norm"], rel=1e-4)
    assert logged[1]["loss"] == pytest.approx(logged[0]["loss"], abs=1e-5)


def test_the_optimizer_steps_on_clipped_gradients(corpus_dir, tmp_path, monkeypatch):
    """Clipping comes before the update: with a tiny --grad_clip the optimizer sees gradients of
    norm grad_clip, while the log keeps the norm before clipping."""
    real_make_optimizer, seen = train_pretrain.make_optimizer, []

    def recording(model, *args, **kwargs):
        optimizer = real_make_optimizer(model, *args, **kwargs)
        real_step = optimizer.step

        def step():
            seen.append(torch.stack([p.grad.norm() for p in model.parameters()]).norm().item())
            real_step()
        optimizer.step = step
        return optimizer
    monkeypatch.setattr(train_pretrain, "make_optimizer", recording)
    out = tmp_path / "clip"
    run_main(train_pretrain, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--max_steps=2",
                                      "--eval_batches=1", "--dtype=float32", "--grad_clip=1e-3"])
    assert len(seen) == 2 and all(norm == pytest.approx(1e-3, rel=1e-3) for norm in seen)
    assert all(m["grad_norm"] > 0.1 for m in read_metrics(out) if "grad_norm" in m)


def test_the_validation_loss_reads_val_bin(corpus_dir, tmp_path, monkeypatch):
    """Before training and at each evaluation, the loss comes from the held-out stream."""
    seen, real = [], train_pretrain.estimate_loss

    def estimate_loss(model, data, cfg, rt):
        seen.append(os.path.basename(data.filename))
        return real(model, data, cfg, rt)
    monkeypatch.setattr(train_pretrain, "estimate_loss", estimate_loss)
    run_main(train_pretrain, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={tmp_path / 'val'}", "--max_steps=4",
                                      "--eval_interval=2", "--eval_batches=1"])
    assert len(seen) >= 3 and set(seen) == {"val.bin"}


def test_tokens_per_second_and_mfu_count_every_micro_batch(corpus_dir, tmp_path, monkeypatch):
    """A clock that ticks one second per micro-batch: tokens/s is then one micro-batch's tokens,
    whatever --grad_accum, and MFU is tokens/s x (6 N + 12 L H Q T) over the peak."""
    clock, real_get_batch = [0.0], train_pretrain.get_batch

    def get_batch(*args):
        clock[0] += 1.0
        return real_get_batch(*args)
    monkeypatch.setattr(train_pretrain, "get_batch", get_batch)
    monkeypatch.setattr(train_pretrain, "time", types.SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(train_pretrain, "peak_bf16_flops", lambda device: 1e12)
    out = tmp_path / "speed"
    result = run_main(train_pretrain, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={out}", "--max_steps=2",
                                               "--eval_batches=1", "--dtype=float32", "--grad_accum=3"])
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    c = ckpt["model_config"]
    micro_batch = train_pretrain.PRESETS["micro"]["batch_size"] * c["block_size"]
    flops = 6 * build_model(ckpt).num_params() + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]   # H Q = C
    logged = [m for m in read_metrics(out) if "tok_per_s" in m]
    assert len(logged) == 2 and all(m["tok_per_s"] == micro_batch for m in logged)
    assert all(m["mfu"] == pytest.approx(micro_batch * flops / 1e12) for m in logged)
    assert result["tokens_per_s"] == micro_batch and result["mfu"] == pytest.approx(micro_batch * flops / 1e12)


def test_validation_loss_is_measured_without_dropout_and_training_goes_on_with_it():
    """estimate_loss scores in eval mode (dropout off: the same windows give the same number
    every time) and hands the model back in train mode."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5)).train()
    data = np.random.default_rng(0).integers(0, 64, 1000).astype(np.uint16)
    cfg = train_pretrain.Config(batch_size=4, block_size=16, eval_batches=2, dtype="float32")
    rt = Runtime("cpu", "cpu")
    first = train_pretrain.estimate_loss(model, data, cfg, rt)
    assert model.training
    assert train_pretrain.estimate_loss(model, data, cfg, rt) == first
