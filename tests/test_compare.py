"""compare.py: the alignment lab's card, on the micro pipeline's models."""
import json
import math
import os
from types import SimpleNamespace

import pytest

import compare
from minift.checkpoint import load_checkpoint, save_checkpoint
from minift.formats import load_ifeval_inputs, load_ifeval_responses


def test_best_of_n_kl_is_the_formula():
    assert compare.best_of_n_kl(1) == 0.0
    assert compare.best_of_n_kl(8) == pytest.approx(math.log(8) - 7 / 8)


def test_summarise_gives_the_spread_only_over_two_seeds_or_more():
    one = compare.summarise([{"test": 0.5, "kl": 1.0, "seconds": 3.0}])
    assert one == {"test": 0.5, "kl": 1.0, "seconds": 3.0}
    two = compare.summarise([{"test": 0.4, "seconds": 1.0}, {"test": 0.6, "seconds": 3.0}, {"skipped": "why"}])
    assert two["test"] == pytest.approx(0.5) and two["test_sd"] == pytest.approx(0.02 ** 0.5)
    assert "kl" not in two
    # a column only some runs have: averaged over those, with no spread from a single value
    part = compare.summarise([{"test": 0.4, "kl": 1.0}, {"test": 0.6}])
    assert part["kl"] == 1.0 and "kl_sd" not in part and "test_sd" in part


def test_a_row_with_a_skipped_seed_says_how_many_seeds_it_averages():
    runs = [{"test": 0.4}, {"skipped": "error: nothing to learn from: 0 prompts"}, {"test": 0.6}]
    results = {"sft": {**compare.summarise(runs[:1]), "runs": runs[:1]},
               "rejection": {**compare.summarise(runs), "runs": runs},
               "dpo": {**compare.summarise(runs[::2] + runs[:1]), "runs": runs[::2] + runs[:1]}}
    card = compare.compare_markdown(results, "tiny", ["1337", "2", "3"])
    assert "| rejection (2 of 3 seeds) |" in card and "| dpo |" in card and "| sft |" in card


def test_micro_card(micro_pipeline, tmp_path):
    shared, _ = micro_pipeline
    out = tmp_path / "micro"
    out.mkdir()
    for stage in ("sft", "reward", "data", "ppo", "pipeline.json"):   # the shared run's, read only
        os.symlink(os.path.join(shared, stage), out / stage)
    report = compare.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--methods=sft,best_of_8,dpo,ppo,grpo"])
    rows = report["methods"]
    assert list(rows) == ["sft", "best_of_8", "dpo", "ppo", "grpo"]
    assert rows["sft"]["kl"] == 0.0 and rows["sft"]["seconds"] == 0.0
    assert rows["best_of_8"]["kl"] == pytest.approx(compare.best_of_n_kl(8))
    assert "sampled" not in rows["best_of_8"]   # its answers are samples already
    # the pipeline's own PPO run is reused for the training scripts' default seed: its stage's time
    with open(out / "ppo" / "stage.json") as f:
        assert rows["ppo"]["seconds"] == json.load(f)["seconds"]
    assert not os.path.exists(out / "compare" / "ppo-1337" / "ckpt.pt")
    assert os.path.exists(out / "compare" / "dpo-1337" / "ckpt.pt")
    for row in rows.values():
        assert 0 <= row["test"] <= 1 and 0 <= row["heldout"] <= 1
    # prompt by prompt against SFT's greedy answers: the moves add up to the change of the pass rate
    n = len(load_ifeval_responses(out / "compare" / "dpo-1337" / "responses_test.jsonl"))
    for method in ("dpo", "ppo", "grpo"):
        moved = rows[method]["fail_to_pass"] - rows[method]["pass_to_fail"]
        assert moved == round((rows[method]["test"] - rows["sft"]["test"]) * n)
    assert "fail_to_pass" not in rows["sft"] and "fail_to_pass" not in rows["best_of_8"]
    with open(out / "compare.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    card = (out / "compare.md").read_text()
    assert "| dpo | the pairs |" in card and "| best_of_8 | reward model |" in card
    assert "| grpo | reward model |" in card


def test_a_policy_is_zero_nats_from_itself(micro_pipeline):
    shared, _ = micro_pipeline
    sft = os.path.join(shared, "sft", "ckpt.pt")
    records = load_ifeval_inputs(os.path.join(shared, "data", "sft", "test.jsonl"))[:8]
    assert compare.kl_to_sft(sft, sft, records, "cpu", "micro") == 0.0
    ppo = os.path.join(shared, "ppo", "ckpt.pt")
    kl = compare.kl_to_sft(ppo, sft, records, "cpu", "micro")
    assert kl != 0.0
    # answers as long as PPO's at this preset: the tiny preset's longer ones hold another KL
    assert compare.kl_to_sft(ppo, sft, records, "cpu", "tiny") != kl


def test_a_policy_far_from_sft_is_many_nats_from_it(micro_pipeline, tmp_path):
    """SFT with its output logits tripled: sharper in every answer, so clearly positive KL."""
    shared, _ = micro_pipeline
    sft = os.path.join(shared, "sft", "ckpt.pt")
    ckpt = load_checkpoint(sft)
    head = next(k for k in ckpt["model"] if k.endswith("lm_head.weight"))
    ckpt["model"][head] = 3 * ckpt["model"][head]
    save_checkpoint(str(tmp_path / "far.pt"), ckpt)
    records = load_ifeval_inputs(os.path.join(shared, "data", "sft", "test.jsonl"))[:16]
    far = str(tmp_path / "far.pt")
    assert compare.kl_to_sft(far, sft, records, "cpu", "micro") > 1.0
    # over several batches of 64 it is the mean over every answer, not over the last batch's
    many = records * 5   # 80 answers: a batch of 64, then 16 sampled with the seed that batch gets
    whole = compare.kl_to_sft(far, sft, many, "cpu", "micro")
    parts = (64 * compare.kl_to_sft(far, sft, many[:64], "cpu", "micro")
             + 16 * compare.kl_to_sft(far, sft, many[64:], "cpu", "micro", seed=64)) / 80
    assert whole == pytest.approx(parts, rel=1e-5)


def test_every_method_gets_the_seed_asked_for(micro_pipeline, tmp_path, monkeypatch):
    """The spread over seeds is only a spread if each seed reaches the run: each trainer's
    --seed, best-of-8's sampling seed on both splits, and main's loop over --seeds."""
    shared, _ = micro_pipeline
    argv = {}
    for module in (compare.train_ppo, compare.train_grpo, compare.train_dpo, compare.rejection_sampling):
        monkeypatch.setattr(module, "main", lambda args, module=module: argv.setdefault(module.__name__, []).append(args))
    for method in ("rejection", "dpo", "ppo", "grpo", "ppo_gold", "grpo_gold"):
        argv.clear()
        compare.train(method, 7, str(tmp_path / method), shared, [])
        (args,) = [a for calls in argv.values() for a in calls]
        assert "--seed=7" in args, method
    seeds = []
    monkeypatch.setattr(compare.evaluate, "evaluate",
                        lambda *a, seed=None, **k: seeds.append(seed) or {"best_of_k_prompt_strict": 0.5})
    compare.one_run("best_of_8", 7, shared, SimpleNamespace(preset="micro", kl_examples=8, device="cpu"), "cpu")
    assert seeds == [7, 7]
    out = tmp_path / "micro"   # the pipeline's run, with a compare folder of this test's own
    out.mkdir()
    for stage in ("sft", "reward", "data", "ppo", "pipeline.json"):
        os.symlink(os.path.join(shared, stage), out / stage)
    runs = []
    monkeypatch.setattr(compare, "one_run", lambda method, seed, *a: runs.append((method, seed)) or {"test": 0.5})
    compare.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--methods=sft,dpo", "--seeds=1337,2"])
    assert runs == [("sft", 1337), ("dpo", 1337), ("dpo", 2)]


def test_the_pipelines_ppo_is_reused_only_once_its_stage_finished(tmp_path):
    """A checkpoint alone may be a PPO stage stopped by Ctrl-C: only its stage.json says it ran to the end."""
    (tmp_path / "ppo").mkdir()
    (tmp_path / "pipeline.json").write_text('{"seed": 1337}')
    (tmp_path / "ppo" / "ckpt.pt").write_text("")
    assert not compare.reuses_pipeline_ppo("ppo", 1337, str(tmp_path))
    (tmp_path / "ppo" / "stage.json").write_text('{"seconds": 1.0}')
    assert compare.reuses_pipeline_ppo("ppo", 1337, str(tmp_path))


def test_an_unknown_method_is_named():
    with pytest.raises(SystemExit, match="unknown method.*dpoo"):
        compare.main(["--methods=sft,dpoo"])
    with pytest.raises(SystemExit, match=r"unknown method\(s\) dpoo;"):   # spaces after commas are not names
        compare.main(["--methods=sft, dpoo"])
    with pytest.raises(SystemExit, match="--methods is empty; choose from sft"):
        compare.main(["--methods="])


def test_without_the_pipeline_it_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="python pipeline.py --preset=tiny --out_dir="):
        compare.main([f"--out_dir={tmp_path}"])


def test_the_pipelines_ppo_run_is_reused_only_for_its_own_seed_and_preset(micro_pipeline, tmp_path):
    """After pipeline.py --seed=2, its PPO run is seed 2's, not the scripts' default 1337's."""
    shared, _ = micro_pipeline
    out = tmp_path / "micro"
    out.mkdir()
    for stage in ("sft", "reward", "data", "ppo"):
        os.symlink(os.path.join(shared, stage), out / stage)
    with open(out / "pipeline.json", "w") as f:
        json.dump({"preset": "micro", "slip_scale": 1.0, "seed": 2}, f)
    assert compare.reuses_pipeline_ppo("ppo", 2, out) and not compare.reuses_pipeline_ppo("ppo", 1337, out)
    assert not compare.reuses_pipeline_ppo("grpo", 2, out)
    with pytest.raises(SystemExit, match="preset micro; run python compare.py --preset=micro"):
        compare.main(["--preset=tiny", f"--out_dir={out}", "--methods=sft"])
    with pytest.raises(SystemExit, match="--seeds=1337,x"):
        compare.main(["--preset=micro", f"--out_dir={out}", "--methods=sft", "--seeds=1337,x"])


def test_only_rejection_samplings_nothing_to_learn_from_is_a_skip(micro_pipeline, tmp_path, monkeypatch):
    """Rejection sampling that finds no perfect sample is a result (the card says skipped); any
    other error, from any method, stops compare.py with its message."""
    shared, _ = micro_pipeline
    out = tmp_path / "micro"
    out.mkdir()
    for stage in ("sft", "reward", "data", "ppo", "pipeline.json"):
        os.symlink(os.path.join(shared, stage), out / stage)

    def fail(method, seed, *args):
        raise SystemExit("error: nothing to learn from: 0 prompts" if method == "rejection" else "error: no file")
    monkeypatch.setattr(compare, "one_run", fail)
    report = compare.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--methods=rejection"])
    assert report["methods"]["rejection"]["runs"] == [{"skipped": "error: nothing to learn from: 0 prompts"}]
    with pytest.raises(SystemExit, match="error: no file"):
        compare.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--methods=dpo"])
