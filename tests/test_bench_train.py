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
                                          (["--stpes=2"], "--stpes=2")])
def test_bad_options_stop_with_one_line(args, needle):
    with pytest.raises(SystemExit, match=needle):
        bench_train.main(["--device=cpu"] + args)
