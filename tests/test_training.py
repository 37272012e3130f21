"""minift.training: the learning-rate schedule, Muon, Ctrl-C (one press saves, a second quits; seen by every DDP
rank), the NaN guard, CPU autocast."""
import json
import os
import re
import signal
from dataclasses import dataclass

import pytest
import torch

from minift.checkpoint import resume_training, save_training_checkpoint
from minift.model import GPT, GPTConfig
from minift.training import (MUON_NS_STEPS, Interrupted, MetricsLog, Muon, NonFiniteLoss, OptimizerPair, Runtime,
                             StopRequest, check_finite, lr_at, make_optimizer, multiplies_bf16, orthogonalize,
                             pick_device, product_dtype, read_step, set_lr)


def test_lr_schedule():
    lrs = [lr_at(s, 1.0, 0.1, 10, 110) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)   # linear warmup
    assert lrs[60] == pytest.approx(0.55)                                   # cosine midpoint
    assert all(a >= b for a, b in zip(lrs[9:110], lrs[10:111]))             # monotone decay
    assert lrs[110] == lrs[129] == pytest.approx(0.1)                       # flat at min_lr


@dataclass
class OptimizerCfg:
    optimizer: str = "muon"


def test_muon_takes_the_blocks_matrices_and_resumes_exactly(tmp_path):
    """kind="muon": Muon updates the transformer blocks' weight matrices, and AdamW everything
    else (the embedding tied to the LM head, LayerNorm gains). Every parameter is in exactly
    one of the two, set_lr reaches both, and a resumed run takes the same next step as the
    run it was saved from. Resuming with the other optimizer is a clear error."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(config)
    opt = make_optimizer(model, 1e-2, 0.0, kind="muon")
    assert isinstance(opt, OptimizerPair)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adamw = ({names[id(p)] for g in o.param_groups for p in g["params"]} for o in opt.optimizers)
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert len(muon) == 8 and not muon & adamw and muon | adamw == set(names.values())
    set_lr(opt, 3e-3)
    assert [g["lr"] for g in opt.param_groups] == [3e-3] * 3

    batches = [torch.randint(64, (2, 16)) for _ in range(2)]

    def train_step(m, o, x):
        m(x, x)[1].backward()
        o.step()
        o.zero_grad(set_to_none=True)

    train_step(model, opt, batches[0])
    path = str(tmp_path / "ckpt.pt")
    save_training_checkpoint(path, "sft", 1, model, opt, OptimizerCfg(), {}, torch.Generator(), {})
    resumed = GPT(config)
    resumed_opt = make_optimizer(resumed, 1e-2, 0.0, kind="muon")
    set_lr(resumed_opt, 3e-3)
    resume_training(path, resumed, resumed_opt, torch.Generator())
    for m, o in ((model, opt), (resumed, resumed_opt)):
        train_step(m, o, batches[1])  # uses the momentum buffers: they must have been restored
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="trained with --optimizer=muon"):
        resume_training(path, GPT(config), make_optimizer(GPT(config), 1e-2, 0.0), torch.Generator())
    with pytest.raises(ValueError, match="adamw or muon"):
        make_optimizer(model, 1e-2, 0.0, kind="sgd")


def test_our_muon_matches_pytorchs_and_orthogonalizes():
    """minift.training.Muon orthogonalizes all matrices of one shape in one batched product;
    it must take exactly the steps of PyTorch's per-matrix torch.optim.Muon (same
    coefficients, bf16 products, match_rms_adamw scaling, decoupled weight decay), for tall,
    wide and square matrices alike. And what it applies is near-orthogonal: after 5
    iterations every singular value lies within [0.5, 1.5] (Jordan et al.'s "roughly
    0.7 to 1.2"), whatever the scale of the input."""
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (16, 16), (48, 16), (24, 8)]
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    ours_opt = Muon(ours, lr=1e-2, weight_decay=0.1, ns_dtype=torch.bfloat16)   # PyTorch's products are bf16
    theirs_opt = torch.optim.Muon(theirs, lr=1e-2, weight_decay=0.1, ns_steps=MUON_NS_STEPS,
                                  adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours_opt.step()
        theirs_opt.step()
    for a, b, a0, shape in zip(ours, theirs, start, shapes):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), shape
        assert (a - a0).abs().max() > 1e-3, shape  # and the steps were not empty

    updates = torch.randn(3, 16, 40) * torch.tensor([1e-3, 1.0, 1e3]).view(3, 1, 1)
    for dtype in (torch.bfloat16, torch.float32):
        singular_values = torch.linalg.svdvals(orthogonalize(updates, steps=5, dtype=dtype).float())
        assert singular_values.min() > 0.5 and singular_values.max() < 1.5, dtype


def test_muon_multiplies_in_bf16_only_where_the_hardware_does():
    """On a CPU without bf16 units PyTorch emulates bf16 products, many times slower than fp32:
    Muon then orthogonalizes in fp32, and takes nearly the steps it takes in bf16."""
    assert product_dtype("cpu") == (torch.bfloat16 if multiplies_bf16("cpu") else torch.float32)
    torch.manual_seed(0)
    start = torch.randn(48, 16) * 0.1
    grads = [torch.randn(48, 16) for _ in range(3)]
    steps = {}
    for dtype in (None, torch.bfloat16, torch.float32):
        p = torch.nn.Parameter(start.clone())
        opt = Muon([p], lr=1e-2, ns_dtype=dtype)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        steps[dtype] = p.detach() - start
    assert torch.equal(steps[None], steps[product_dtype("cpu")])
    assert not torch.equal(steps[torch.bfloat16], steps[torch.float32])
    scale = steps[torch.float32].abs().max()
    assert torch.allclose(steps[torch.bfloat16], steps[torch.float32], rtol=0, atol=0.02 * scale)


def _stop_flags_on_rank(rank, init_file, asked, out_dir):
    """One process of test_ctrl_c_on_one_rank_stops_every_rank: rank `asked` gets the Ctrl-C."""
    import torch.distributed as dist
    from minift.training import Runtime, StopRequest, all_reduce_mean
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rt = Runtime("cpu", "cpu", rank, rank, 2)
    stop = StopRequest(rt)
    before = stop.agreed()            # nobody asked yet
    stop.requested = rank == asked    # what the SIGINT handler does, on one rank only
    after = stop.agreed()
    mean = all_reduce_mean(rank + 1.0, rt)   # the ranks' 1 and 2: every rank logs their mean
    with open(os.path.join(out_dir, f"rank{rank}"), "w") as f:
        f.write(f"{before} {after} {stop.requested} {mean}")
    dist.destroy_process_group()


def test_a_first_ctrl_c_asks_for_a_save_and_a_second_quits(capsys):
    """The first SIGINT only sets the flag the loop checks after its step (which then saves and
    ends in Interrupted); the second quits at once; leaving the block restores the handler."""
    before, seen = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        stop.raise_if_requested("not asked yet")            # nothing asked: goes on
        signal.raise_signal(signal.SIGINT)
        seen.append(stop.agreed())
        with pytest.raises(Interrupted, match="saved at step 3; run the same command again to resume"):
            stop.raise_if_requested("saved at step 3")
        signal.raise_signal(signal.SIGINT)
        seen.append("went on")
    assert seen == [True] and "saving a checkpoint after this step" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before
    # under torchrun every process gets the signal, and only rank 0 says so
    for rank, said in ((1, False), (0, True)):
        with StopRequest(Runtime("cpu", "cpu", rank, rank, 2)) as stop:
            signal.raise_signal(signal.SIGINT)
        assert stop.requested and ("saving a checkpoint" in capsys.readouterr().out) == said


def test_read_step_refuses_a_nan_gradient_norm_and_reads_floats():
    assert read_step(torch.tensor(2.5), torch.tensor(0.5), 3, "out/ckpt.pt") == (2.5, 0.5)
    with pytest.raises(NonFiniteLoss, match="gradient norm is nan at step 3; stopping without saving, so "
                                            "out/ckpt.pt keeps"):
        read_step(torch.tensor(2.5), torch.tensor(float("nan")), 3, "out/ckpt.pt")


def test_ctrl_c_on_one_rank_stops_every_rank(tmp_path):
    """Under DDP a stop asked on one rank is seen by all of them after the same step, and
    each then holds the flag (rank 0, which saves the checkpoint, included)."""
    import torch.multiprocessing as mp
    mp.spawn(_stop_flags_on_rank, args=(str(tmp_path / "init"), 1, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text() == "False True True 1.5"


def test_cpu_autocast_only_with_bf16_products_and_never_for_float32():
    rt = Runtime("cpu", "cpu")
    with rt.autocast("bfloat16"):
        assert torch.is_autocast_enabled("cpu") == multiplies_bf16("cpu")
    with rt.autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # constructing a CUDA autocast here
def test_a_gpu_without_bf16_units_runs_in_fp32(monkeypatch):
    """A T4 (compute capability 7.5) has no bf16 units: autocast and Muon's products stay fp32
    there, and use bf16 on an Ampere or later GPU (faked: no GPU needed)."""
    rt = Runtime("cuda:0", "cuda")
    try:
        for has_units in (False, True):
            # a T4 passes PyTorch's default check, which counts emulation: only the units count here
            monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                                lambda including_emulation=True: has_units or including_emulation)
            multiplies_bf16.cache_clear()
            assert isinstance(rt.autocast("bfloat16"), torch.autocast) == has_units
            assert product_dtype("cuda:0") == (torch.bfloat16 if has_units else torch.float32)
            assert not isinstance(rt.autocast("float32"), torch.autocast)
    finally:
        multiplies_bf16.cache_clear()   # forget the faked answers


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_weight_decay_reaches_the_matrices_only(kind):
    """Biases and LayerNorm gains are not decayed: pulling them toward 0 regularises nothing."""
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True))
    optimizer = make_optimizer(model, 1e-3, 0.1, kind=kind)
    groups = [g for o in getattr(optimizer, "optimizers", [optimizer]) for g in o.param_groups]
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay) == len(list(model.parameters()))   # every parameter has its one group
    assert all(decay[id(p)] == (0.1 if p.dim() >= 2 else 0.0) for p in model.parameters())
    assert any(p.dim() < 2 for p in model.parameters())


def test_the_nan_guard_refuses_infinities_too():
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteLoss, match="at step 7"):
            check_finite(bad, 7, "out/ckpt.pt")
    check_finite(1e30, 7, "out/ckpt.pt")


def test_a_resumed_log_keeps_the_saved_steps_and_a_new_run_a_new_log(tmp_path):
    """A run that died after its last save (step 2) had logged steps 3 and 4, and a line cut
    before its newline; resumed at step 2 it logs 3 and 4 again, so those go, and the log holds
    each step once. A step that is not a number (a hand edit) goes too."""
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 0, "val_loss": 7.6}\n', '{"step": 2, "loss": 2.0}\n', '{"step": 2, "val_loss": 2.1}\n',
             '{"step": 4, "loss": 1.0}\n', '{"iteration": 3, "kl": 0.1}\n', '{"step": "1"}\n', '{"step": 1}']
    path.write_text("".join(lines))
    MetricsLog(str(path), step=2).log(step=3, loss=1.5)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("step", r.get("iteration")) for r in kept] == [0, 2, 2, 3] and kept[-1]["loss"] == 1.5
    MetricsLog(str(path), enabled=False, step=0)     # another rank's: it leaves the file to rank 0
    assert len(path.read_text().splitlines()) == 4
    MetricsLog(str(path), step=0)                    # a run from step 0: nothing of an old run stays
    assert path.read_text() == ""


def test_a_device_this_machine_lacks_is_refused_in_one_line(monkeypatch):
    """Not a traceback from the first tensor moved there (or, in pipeline.py, after the data stage)."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for gpus, device, said in ((0, "cuda", "--device=cuda: this PyTorch sees no CUDA GPU"),
                               (0, "mps", "--device=mps: this PyTorch sees no Apple GPU (MPS)"),
                               (1, "cuda:1", "--device=cuda:1: this machine's one GPU is cuda:0"),
                               (2, "cuda:2", "--device=cuda:2: its GPUs are cuda:0 to cuda:1")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        with pytest.raises(ValueError, match=re.escape(said) + ".*use --device=auto or --device=cpu"):
            pick_device(device)
        assert pick_device("cpu") == "cpu" and pick_device("auto") == ("cuda" if gpus else "cpu")
    assert pick_device("cuda:1") == "cuda:1"   # two GPUs: the second exists
    for typo in ("cuda:x", "cuda:-1", "gpu"):   # the benches pass --device without the configs' check
        with pytest.raises(ValueError, match=f"--device={typo} is not a device; expected auto, cpu"):
            pick_device(typo)
