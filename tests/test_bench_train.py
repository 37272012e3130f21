"""bench/bench_train.py's side-by-side and the MFU arithmetic it shares with train_pretrain.py."""
import json
import os
import sys

import pytest
import torch

from conftest import ROOT
from minift.training import PEAK_BF16_FLOPS, flops_per_token, peak_bf16_flops

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_train  # noqa: E402


def test_side_by_side_on_the_cpu_smoke_config(tmp_path):
    path = tmp_path / "bench.json"
    reports = bench_train.main(["--config=cpu-smoke", "--device=cpu", "--steps=2", "--warmup=1", f"--json={path}"])
    (report,) = json.loads(path.read_text())
    assert report["config"] == "cpu-smoke" and report == json.loads(json.dumps(reports[0]))
    ours, plain = report["results"]
    assert (ours["model"], plain["model"]) == ("minift GPT", "plain GPT-2")
    assert ours["tokens_per_s"] > 0 and plain["tokens_per_s"] > 0 and ours["mfu"] is None  # no GPU peak
    assert abs(report["speed_ratio"] - ours["tokens_per_s"] / plain["tokens_per_s"]) < 1e-9
    # on a CPU both models share one process: no per-model peak memory to compare
    assert ours["peak_bytes"] is None and report["memory_ratio"] is None
    # the same weight matrices; GPT-2's position table is left out of its count (no product runs on it)
    assert ours["params"] == plain["params"]


def test_plain_gpt2_scores_every_position_like_minift():
    """Both models' losses are the mean cross-entropy over every target, from the same weights
    apart from positions: at initialisation both sit near log(V)."""
    config = bench_train.GPTConfig(**bench_train.CONFIGS["cpu-smoke"][0])
    torch.manual_seed(0)
    x, y = torch.randint(0, config.vocab_size, (2, 2, config.block_size))
    logits, loss = bench_train.PlainGPT2(config)(x, y)
    assert logits.shape == (2, config.block_size, config.vocab_size)
    assert abs(loss.item() - torch.log(torch.tensor(float(config.vocab_size))).item()) < 0.3


def test_flops_per_token_and_peak_lookup(monkeypatch):
    # GPT-2 small as nanoGPT counts it: 6 N + 12 L H Q T
    assert flops_per_token(124e6, 12, 12, 64, 1024) == 6 * 124e6 + 12 * 12 * 12 * 64 * 1024
    assert peak_bf16_flops("cpu") is None
    for name, peak in (("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 NVL", 835e12), ("NVIDIA L40", 181e12),
                       ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("Some Future GPU", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_bf16_flops("cuda:0") == peak, name
    assert all(v > 1e13 for v in PEAK_BF16_FLOPS.values())


def test_minift_keeps_about_as_many_activations_for_backward_as_plain_gpt2():
    """--saved counts the activations autograd keeps for the backward pass. Rotary positions add
    rotated copies of q and k; with v copied as well, the (B, T, 3C) projection is not kept too,
    and minift's GPT keeps within a tenth of what the plain GPT-2 keeps."""
    config, batch_size = bench_train.CONFIGS["cpu-smoke"]
    ours, plain = (bench_train.saved_activation_bytes(cls, config, batch_size, "cpu")
                   for cls in (bench_train.GPT, bench_train.PlainGPT2))
    # at least the fp32 log-softmax over every position, which the cross-entropy keeps
    assert plain >= batch_size * config["block_size"] * config["vocab_size"] * 4
    assert ours <= 1.1 * plain, (ours, plain)


@pytest.mark.parametrize("args, needle", [(["--config=nope"], "--config=nope"), (["--steps=0"], "--steps=0"),
                                          (["--stpes=2"], "--stpes=2"), (["--compile=maybe"], "--compile=maybe")])
def test_bad_options_stop_with_one_line(args, needle):
    with pytest.raises(SystemExit, match=needle):
        bench_train.main(["--device=cpu"] + args)


def test_flops_tokens_and_mfu_are_those_of_the_step_timed(monkeypatch):
    """6 N + 12 L H Q T for the model and sequence length timed, N counting the tied embedding once
    and GPT-2's position table not at all; tokens/s from B x T; MFU against the peak."""
    monkeypatch.setattr(bench_train, "peak_bf16_flops", lambda device: 1e12)
    config, batch_size = bench_train.CONFIGS["cpu-smoke"]
    L, H, C, T, V = (config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    n = V * C + L * (12 * C * C + 2 * C) + C   # embedding, blocks (4 + 8 C^2, two LayerNorms), ln_f
    for cls in (bench_train.GPT, bench_train.PlainGPT2):
        bench = bench_train.Bench(cls, cls.__name__, config, batch_size, "cpu")
        assert bench.x.shape == bench.y.shape == (batch_size, T) and bench.tokens == batch_size * T
        assert bench.n_params == n and bench.flops_per_token == 6 * n + 12 * L * H * (C // H) * T, cls
        bench.seconds = [0.5, 1.5]    # two timed rounds, a mean of 1 s a step
        r = bench.result()
        assert r["ms_per_step"] == 1000 and r["tokens_per_s"] == batch_size * T
        assert r["mfu"] == pytest.approx(batch_size * T * bench.flops_per_token / 1e12)


def test_a_step_time_is_read_after_the_gpu_finishes_and_warm_up_is_not_timed(monkeypatch):
    """The clock stops only after torch.cuda.synchronize (a GPU runs behind the host), and the
    warm-up steps (torch.compile's compilation among them) are never among the timed ones."""
    config, batch_size = bench_train.CONFIGS["cpu-smoke"]
    bench = bench_train.Bench(bench_train.GPT, "", config, batch_size, "cpu")
    events = []
    bench.gpu, bench.step = True, lambda: events.append("step")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = iter(range(100))
    monkeypatch.setattr(bench_train, "time", type("Clock", (), {"perf_counter": lambda: events.append("clock")
                                                               or float(next(clock))}))
    bench.warm_up(3)
    assert events == ["step"] * 3 + ["sync"] and bench.seconds == []
    events.clear()
    bench.time(2)
    assert events == ["clock", "step", "step", "sync", "clock"] and bench.seconds == [0.5]


def test_interleaved_says_how_many_times_as_fast_b_is(capsys):
    class Timed:
        def __init__(self, seconds):
            self.planned, self.seconds = list(seconds), []

        def time(self, steps):
            self.seconds.append(self.planned.pop(0))
    bench_train.interleaved("fp32", Timed([0.3, 0.3]), "bf16 autocast", Timed([0.1, 0.2]), steps=1)
    assert capsys.readouterr().out == ("fp32 300 / 300 ms/step, bf16 autocast 100 / 200 ms/step: "
                                       "bf16 autocast is 2.00x as fast\n")


def test_plain_gpt2_keeps_attention_in_fp32_under_cpu_autocast_as_minift_does(monkeypatch):
    """Under CPU bf16 autocast minift's GPT runs attention in fp32 (minift.model.attention); a
    GPT-2 running PyTorch's bf16 CPU attention instead would be timed on another kernel."""
    sdpa, dtypes = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **kw: dtypes.append(q.dtype) or sdpa(q, *a, **kw))
    config = bench_train.GPTConfig(**bench_train.CONFIGS["cpu-smoke"][0])
    x, y = torch.randint(0, config.vocab_size, (2, 2, config.block_size))
    seen = {}
    for cls in (bench_train.GPT, bench_train.PlainGPT2):
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cls(config)(x, y)
        seen[cls.__name__] = set(dtypes)
    assert seen == {"GPT": {torch.float32}, "PlainGPT2": {torch.float32}}


@pytest.mark.parametrize("word, compiled", [("False", False), ("off", False), ("0", False), ("no", False),
                                            ("True", True), ("on", True), ("1", True)])
def test_compile_takes_the_training_scripts_words(monkeypatch, word, compiled):
    seen = []
    monkeypatch.setattr(bench_train, "side_by_side", lambda name, device, compile, *a: seen.append(compile) or {})
    bench_train.main(["--config=cpu-smoke", "--device=cpu", f"--compile={word}"])
    assert seen == [compiled]


def test_bf16_and_muon_arms_time_what_they_name(monkeypatch):
    """--bf16: fp32 against bf16 autocast (here as on a CPU with bf16 units). --muon: AdamW
    against Muon, both in fp32, as FINDINGS.md's figure was measured. --saved=false runs nothing."""
    import minift.training
    monkeypatch.setattr(minift.training, "multiplies_bf16", lambda device_type: True)
    monkeypatch.setattr(bench_train, "side_by_side", lambda *a: {})
    monkeypatch.setattr(bench_train, "saved_activation_bytes", lambda *a: pytest.fail("--saved=false ran"))
    arms = {}
    monkeypatch.setattr(bench_train, "interleaved",
                        lambda a, bench_a, b, bench_b, steps: arms.update({a: bench_a, b: bench_b}))
    bench_train.main(["--config=cpu-smoke", "--device=cpu", "--warmup=0", "--bf16", "--muon=true", "--saved=false"])

    def precision(bench):
        context = bench.autocast()
        return context.fast_dtype if isinstance(context, torch.autocast) else torch.float32
    assert {name: precision(bench) for name, bench in arms.items()} == {
        "fp32": torch.float32, "bf16 autocast": torch.bfloat16, "AdamW": torch.float32, "Muon": torch.float32}
    assert isinstance(arms["AdamW"].opt, torch.optim.AdamW)
    assert isinstance(arms["Muon"].opt, minift.training.OptimizerPair)


def test_saved_activation_bytes_count_each_kept_storage_once_and_no_parameters():
    """A toy whose backward keeps the token ids (a view of the (2, B, T) draw: its whole storage)
    and the linear layer's input; its weight is a parameter, left out."""
    config, batch_size = bench_train.CONFIGS["cpu-smoke"]

    class Toy(torch.nn.Module):
        def __init__(self, model_config):
            super().__init__()
            self.wte = torch.nn.Embedding(model_config.vocab_size, model_config.n_embd)
            self.lin = torch.nn.Linear(model_config.n_embd, model_config.n_embd, bias=False)

        def forward(self, idx, targets):
            return None, self.lin(self.wte(idx)).sum()
    T, C = config["block_size"], config["n_embd"]
    kept = bench_train.saved_activation_bytes(Toy, config, batch_size, "cpu")
    assert kept == 2 * batch_size * T * 8 + batch_size * T * C * 4
