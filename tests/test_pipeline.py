"""pipeline.py: every stage through the real scripts on the micro preset, the report card
(report_card.py), and checkpoints that still work after the output folder moves."""
import copy
import json
import math
import os
import shutil
import statistics
import time

import pytest

import pipeline
import report_card
import train_sft
from conftest import read_metrics, run_main


def test_pipeline_micro_end_to_end(micro_pipeline, tmp_path, monkeypatch, capsys):
    """Every stage through the real scripts on the micro preset; the report has every key."""
    shared, report = micro_pipeline
    out = str(tmp_path / "micro")
    shutil.copytree(shared, out)   # this test moves its folder about; the shared run stays put
    assert report["preset"] == "micro" and report["total_seconds"] > 0
    assert set(report["stages"]["pretrain"]) >= {"seconds", "val_loss", "val_loss_init"}
    assert report["stages"]["pretrain"]["val_loss"] < report["stages"]["pretrain"]["val_loss_init"]
    assert report["stages"]["pretrain"]["tokens_per_s"] > 0  # the machine's speed, for comparing times
    assert "seconds" in report["stages"]["sft"]
    assert set(report["stages"]["reward"]) >= {"seconds", "pair_accuracy", "spearman_gold"}
    assert report["stages"]["reward"]["likelihood_weight"] == 2.0  # train_reward.py's default, reported
    reward = report["stages"]["reward"]   # the held-out figures under the report's names
    assert (reward["pair_accuracy"], reward["spearman_gold"]) == (reward["val_accuracy"], reward["spearman"])
    seconds = []   # the total is the stages' own times, the evaluation's included
    for stage in ("data", "pretrain", "sft", "prefs", "reward", "ppo", "eval"):
        with open(os.path.join(out, stage, "stage.json")) as f:
            seconds.append(json.load(f)["seconds"])
    assert report["total_seconds"] == pytest.approx(sum(seconds), abs=0.05)
    assert report["stages"]["eval"]["seconds"] == seconds[-1]   # the card's eval row
    assert set(report["stages"]["ppo"]) >= {"seconds", "kl", "reward_start", "reward_end", "gold_start", "gold_end"}
    assert report["stages"]["ppo"]["kl_max"] >= report["stages"]["ppo"]["kl"]  # the largest batch KL of the run
    # the probe's change, paired prompt by prompt (per-prompt scores are rounded to 4 decimals)
    ppo = report["stages"]["ppo"]
    assert set(ppo["gold_change"]) == {"mean", "se", "significant"}
    assert abs(ppo["gold_change"]["mean"] - (ppo["gold_end"] - ppo["gold_start"])) < 1e-3
    for model in ("base", "sft", "ppo"):
        for split in ("test", "heldout"):
            m = report["eval"][model][split]
            assert set(m) == {"prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose",
                              "sampled_strict", "gold"}
            assert all(0.0 <= v <= 1.0 for v in m.values())
    # the gold reward of the greedy answers written for each model, and PPO's change of it, paired
    from minift.formats import load_ifeval_inputs
    from minift.synthetic.gold import gold_reward
    records = load_ifeval_inputs(os.path.join(out, "data", "sft", "test.jsonl"))
    with open(os.path.join(out, "ppo", "responses_test.jsonl")) as f:
        gold = [gold_reward(r["prompt"], json.loads(line)["response"], r["instruction_id_list"], r["kwargs"])
                for r, line in zip(records, f)]
    assert abs(report["eval"]["ppo"]["test"]["gold"] - sum(gold) / len(gold)) < 1e-3
    assert set(report["gold_change"]) == {"test", "heldout"}
    change = report["gold_change"]["test"]
    assert abs(change["mean"] - (report["eval"]["ppo"]["test"]["gold"] - report["eval"]["sft"]["test"]["gold"])) < 1e-6
    # SFT -> PPO prompt by prompt: the moves add up to the change of prompt-strict on each split
    n = pipeline.DATA["micro"]["eval_examples"]
    for split in ("test", "heldout"):
        moves = report["sft_to_ppo"][split]
        change = report["eval"]["ppo"][split]["prompt_strict"] - report["eval"]["sft"][split]["prompt_strict"]
        assert moves["fail_to_pass"] - moves["pass_to_fail"] == round(n * change)
        assert 0 <= moves["base_task_done"] <= n and 0 <= moves["demonstrations_where_done"] <= 1
    # the demonstrators' own pass rate, judged by the checkers: they slip, so below 100%
    data = report["stages"]["data"]
    assert 0.3 < data["demo_pass_rate"] < 1.0 and data["slip_scale"] == 1.0
    assert set(data["demo_pass_rates"]) == {"train", "test", "heldout"}
    assert data["demo_pass_rate"] == data["demo_pass_rates"]["train"]   # the data line's figure is train's
    # the card's figures counted again from the files, each on its own split and prompts
    from minift.synthetic.scoring import aggregate, score

    def scored(split, answers):
        recs = load_ifeval_inputs(os.path.join(out, "data", "sft", f"{split}.jsonl"))[:len(answers)]
        return [{**score(a, r["instruction_id_list"], r["kwargs"], r["prompt"]),
                 "instruction_id_list": r["instruction_id_list"]} for r, a in zip(recs, answers, strict=True)]

    def responses(model, split):
        with open(os.path.join(out, model, f"responses_{split}.jsonl")) as f:
            return [json.loads(line)["response"] for line in f]
    for split in ("train", "test", "heldout"):
        demos = [r["messages"][-1]["content"] for r in load_ifeval_inputs(os.path.join(out, "data", "sft",
                                                                                           f"{split}.jsonl"))]
        assert data["demo_pass_rates"][split] == pytest.approx(aggregate(scored(split, demos))["prompt_strict"])
    for model in ("sft", "ppo"):
        for split in ("test", "heldout"):
            recount = aggregate(scored(split, responses(model, split)))
            assert report["eval"][model][split]["prompt_strict"] == pytest.approx(recount["prompt_strict"])
        by_type = {}   # the per-type table is test's
        for row in scored("test", responses(model, "test")):
            for iid, ok in zip(row["instruction_id_list"], row["strict"]):
                by_type.setdefault(iid, []).append(ok)
        assert {iid: (row["n"], pytest.approx(row["strict"])) for iid, row in report["per_type"][model].items()} == \
               {iid: (len(oks), sum(oks) / len(oks)) for iid, oks in by_type.items()}
    with open(os.path.join(out, "report.md")) as f:
        card = f.read()
    assert "tokens/s" in card and "| demonstrations | test |" in card
    assert "| type | n | demonstrations | SFT | PPO |\n" in card
    assert "## What each stage changed" in card and "**PPO** against the reward model" in card
    assert "gold reward |" in card and "The gold reward of its greedy answers changed by" in card
    assert "greedy answers went from fail to pass" in card
    # the rate where PPO does the base task is given only when there is such a prompt
    assert ("where it does the base task itself" in card) == bool(report["sft_to_ppo"]["test"]["base_task_done"])
    assert "copies its demonstrators, slips included" in card
    # the reward model's Spearman says over what it is taken (PPO reads the order within a prompt)
    rm = report["stages"]["reward"]
    assert f"Spearman with gold {rm['spearman_gold']:.3f} over all answers" in card
    assert (f"{rm['spearman_within']:.3f} within a prompt" in card) == (not math.isnan(rm["spearman_within"]))
    assert ("## Answers PPO changed" in card) == bool(report["sft_to_ppo"]["test"]["examples"])
    # with perfect demonstrators (--slip_scale=0) the SFT line does not speak of slips
    perfect = json.loads(json.dumps(report))
    perfect["stages"]["data"]["slip_scale"] = 0.0
    sft_line = next(line for line in report_card.story_lines(perfect) if line.startswith("- **SFT**"))
    assert "slips included" not in sft_line and "perfect" in sft_line
    assert report["curves"] == [] and "python plot.py" in card   # no pictures drawn yet
    # SFT was evaluated during training, and its metrics log has the accuracy
    assert any("eval_prompt_strict" in m for m in read_metrics(os.path.join(out, "sft")))
    # IFEval-format responses were written for external scoring
    with open(os.path.join(out, "sft", "responses_test.jsonl")) as f:
        assert set(json.loads(f.readline())) == {"prompt", "response"}
    # a second run skips every finished stage, and links the curves plot.py has drawn since
    for stage in ("sft", "ppo"):
        open(os.path.join(out, stage, "curves.png"), "wb").close()
    argv = ["--preset=micro", f"--out_dir={out}", "--device=cpu"]
    capsys.readouterr()
    run_main(pipeline, argv)
    printed = capsys.readouterr().out
    assert printed.count("done already") == 7, printed[-2000:]
    # ... and its report still adds up the stages' own times, not just this quick run's
    with open(os.path.join(out, "report.json")) as f:
        again = json.load(f)
    assert again["total_seconds"] == report["total_seconds"] > again["run_seconds"]
    assert again["curves"] == ["sft/curves.png", "ppo/curves.png"]   # relative: the card's links survive a move
    with open(os.path.join(out, "report.md")) as f:
        assert "[sft](sft/curves.png), [ppo](ppo/curves.png)" in f.read()
    # the reference run adds SFT on perfect demonstrations of the same prompts, and nothing else
    run_main(pipeline, argv + ["--reference_sft"])
    printed = capsys.readouterr().out
    assert printed.count("done already") == 7, printed[-2000:]
    with open(os.path.join(out, "report.json")) as f:
        reference = json.load(f)
    assert reference["eval"]["sft"] == report["eval"]["sft"]
    assert set(reference["eval"]["sft_perfect"]["test"]) == set(report["eval"]["sft"]["test"])
    # ... and a column of its own in the per-type table, beside SFT's and PPO's unchanged ones
    assert reference["per_type"]["sft"] == report["per_type"]["sft"] and "sft_perfect" not in report["per_type"]
    assert set(reference["per_type"]["sft_perfect"]) == set(report["per_type"]["sft"])
    with open(os.path.join(out, "report.md")) as f:
        card = f.read()
    assert "| type | n | demonstrations | SFT | PPO | SFT, perfect demonstrations |" in card
    gap = 100 * (reference["eval"]["sft_perfect"]["test"]["prompt_strict"] - reference["eval"]["sft"]["test"]["prompt_strict"])
    assert (f"The slips cost SFT {gap:.1f} points" if gap > 0 else f"nothing here ({gap:+.1f} points)") in card
    with open(os.path.join(out, "data", "sft_perfect", "train.jsonl")) as f:
        assert all(json.loads(line)["slips"] == [] for line in f)
    from minift.checkpoint import load_checkpoint as load
    config = load(os.path.join(out, "sft_perfect", "ckpt.pt"))["config"]
    assert (config["init_from"], config["data"], config["eval_data"]) == (
        os.path.join(out, "pretrain", "ckpt.pt"), os.path.join(out, "data", "sft_perfect", "train.jsonl"),
        os.path.join(out, "data", "sft", "test.jsonl"))
    assert [r["prompt"] for r in load_ifeval_inputs(config["data"])] == \
           [r["prompt"] for r in load_ifeval_inputs(os.path.join(out, "data", "sft", "train.jsonl"))]
    # SFT from the untrained model: the same demonstrations and recipe, without pretraining
    run_main(pipeline, argv + ["--sft_from_scratch"])
    printed = capsys.readouterr().out
    assert printed.count("done already") == 7, printed[-2000:]
    with open(os.path.join(out, "report.json")) as f:
        scratch = json.load(f)
    assert scratch["eval"]["sft"] == report["eval"]["sft"] and "sft_perfect" not in scratch["eval"]
    assert set(scratch["eval"]["sft_scratch"]["test"]) == set(report["eval"]["sft"]["test"])
    # its start is the weights pretraining started from: those of a pretraining run that never moves
    import torch
    import train_pretrain
    train_pretrain.main(["--preset=micro", "--device=cpu", f"--data_dir={out}/data/corpus",
                         f"--out_dir={tmp_path}/init", "--max_steps=1", "--learning_rate=0", "--min_lr=0",
                         "--warmup_steps=0"])
    untrained, initial, pretrained = (load(p)["model"] for p in (os.path.join(out, "sft_scratch", "untrained.pt"),
                                                                 f"{tmp_path}/init/ckpt.pt",
                                                                 os.path.join(out, "pretrain", "ckpt.pt")))
    assert untrained.keys() == initial.keys() and all(torch.equal(untrained[k], initial[k]) for k in untrained)
    assert not torch.equal(untrained["wte.weight"], pretrained["wte.weight"])
    assert load(os.path.join(out, "sft_scratch", "ckpt.pt"))["config"]["init_from"].endswith("untrained.pt")
    with open(os.path.join(out, "report.md")) as f:
        card = f.read()
    test = {m: 100 * scratch["eval"][m]["test"]["prompt_strict"] for m in ("sft", "sft_scratch")}
    gain = test["sft"] - test["sft_scratch"]
    assert "| sft (no pretraining) | test |" in card and f"pretraining is worth {gain:+.1f} points to SFT" in card
    assert "(untrained) to" in card

    # Checkpoints carry their tokenizer: after out/ moves, or a checkpoint is copied on its own
    # to another machine, sample.py and evaluate.py work from the checkpoint alone.
    import evaluate
    import sample
    from minift.checkpoint import load_checkpoint
    moved, alone = tmp_path / "moved", tmp_path / "alone"
    shutil.move(out, moved)
    alone.mkdir()
    shutil.copy(moved / "ppo" / "ckpt.pt", alone / "ckpt.pt")
    assert "ranks" in load_checkpoint(str(alone / "ckpt.pt"))["tokenizer"]
    # the tokenizer file it was made with must not be needed: reading it fails the test
    monkeypatch.setattr("minift.tokenizer.load_tokenizer", lambda path: pytest.fail(f"read {path}"))
    answers = sample.main([f"--ckpt={alone / 'ckpt.pt'}", "--prompt=Name a pet.", "--max_new_tokens=8",
                           "--num_samples=2"])
    assert len(answers) == 2
    metrics = evaluate.main([f"--ckpt={moved / 'sft' / 'ckpt.pt'}", f"--input={moved / 'data' / 'sft' / 'test.jsonl'}",
                             "--device=cpu", "--max_examples=40", f"--out_dir={tmp_path / 'eval'}"])
    greedy = {k: v for k, v in report["eval"]["sft"]["test"].items() if k not in ("sampled_strict", "gold")}
    assert {k: metrics[k] for k in greedy} == greedy
    assert os.path.exists(tmp_path / "eval" / "sft" / "responses_test.jsonl")


def test_report_card_writes_a_finished_runs_card_again(micro_pipeline, tmp_path, capsys):
    """python report_card.py OUT_DIR: the card pipeline.py wrote, rebuilt from report.json alone
    (no model runs); a folder without report.json says which command writes it."""
    shared, _ = micro_pipeline
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(shared, "report.json"), out)
    report_card.main([f"--out_dir={out}"])
    with open(os.path.join(shared, "report.md")) as f:
        assert (out / "report.md").read_text() == f.read()
    assert capsys.readouterr().out.startswith((out / "report.md").read_text()[:200])
    with pytest.raises(SystemExit, match=f"no report.json in {tmp_path}; .*python pipeline.py --out_dir={tmp_path}"):
        report_card.main([str(tmp_path)])


def test_a_finished_sft_run_started_again_reports_what_it_saved(micro_pipeline, tmp_path, capsys):
    """What pipeline.py does when SFT's stage marker is missing (a Ctrl-C during its last
    evaluation): the script resumes at its last step, trains no more, and returns the figures
    its checkpoint saved, not an empty record; it says how to train on."""
    shared, report = micro_pipeline
    out = str(tmp_path / "sft")
    shutil.copytree(os.path.join(shared, "sft"), out)
    data = os.path.join(shared, "data", "sft")
    again = run_main(train_sft, ["--preset=micro", "--device=cpu", "--seed=1337",
                                 f"--init_from={shared}/pretrain/ckpt.pt", f"--data={data}/train.jsonl",
                                 f"--eval_data={data}/test.jsonl", f"--out_dir={out}"])
    saved = {k: v for k, v in report["stages"]["sft"].items() if k != "seconds"}
    assert again == saved and saved["eval_prompts"] > 0 and "prompt_strict" in saved
    steps = saved["step"]
    assert (f"at step {steps} of {steps}; that run is finished and only reports its figures again (a higher "
            "--max_steps would train it on)" in capsys.readouterr().out)


def test_paired_difference_uses_students_t_for_its_degrees_of_freedom():
    """With 11 items (10 degrees of freedom) the cutoff is t = 2.23, not the normal's 2: a mean
    2.1 standard errors from zero is still noise there. Past the table's 30 degrees of freedom
    the cutoff stays at or above the true one (2.040 at 31, 2.000 at 60)."""
    from minift.synthetic.scoring import paired_difference
    for n, cutoff in ((11, 2.23), (32, 2.04), (41, 2.04), (42, 2.02), (61, 2.02), (62, 2.0)):
        spread = [1.0, -1.0] * (n // 2) + [0.0] * (n % 2)        # mean 0
        se = statistics.stdev(spread) / n ** 0.5
        for ratio, significant in ((cutoff - 0.01, False), (cutoff + 0.01, True)):
            after = [ratio * se + d for d in spread]
            result = paired_difference([0.0] * n, after)
            assert result["se"] == pytest.approx(se) and result["significant"] is significant, (n, ratio)


def test_students_t_is_never_below_the_true_cutoff():
    """A cutoff rounded down would call a difference just inside the noise significant: each
    table entry lies within 0.001 above Student's t at 97.5%, and past the table each range's
    value is not below it either. The t distribution's CDF by Simpson's rule."""
    from minift.synthetic.scoring import T_975, t_975

    def cdf(t, df, n=2000):
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        f = [c * (1 + (i * t / n) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + t / n / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    assert sorted(T_975) == list(range(1, 31))
    for df, t in T_975.items():
        assert cdf(t, df) >= 0.975 > cdf(t - 0.001, df), df
    for df in (31, 40, 41, 60, 61, 1000):
        assert cdf(t_975(df), df) >= 0.975, df


def test_the_stage_lines_say_no_more_than_their_numbers(micro_pipeline):
    """Each stage's line reads its numbers: a tie is "level with", a stage that hurt says so
    with its sign, and a rate over no prompts is not given."""
    _, report = micro_pipeline

    def lines(sft, ppo, perfect, scratch, demo, pair_accuracy):
        r = copy.deepcopy(report)
        ev = r["eval"]
        for model, rate in (("sft", sft), ("ppo", ppo), ("sft_perfect", perfect), ("sft_scratch", scratch)):
            ev[model] = copy.deepcopy(report["eval"]["sft"])
            ev[model]["test"]["prompt_strict"] = ev[model]["test"]["sampled_strict"] = rate
        r["stages"]["data"]["demo_pass_rates"]["test"] = demo
        r["stages"]["reward"]["pair_accuracy"] = pair_accuracy
        r["sft_to_ppo"]["test"]["base_task_done"] = 0
        return "\n".join(report_card.story_lines(r))
    text = lines(sft=0.40, ppo=0.47, perfect=0.38, scratch=0.41, demo=0.47, pair_accuracy=0.45)
    assert "level with the demonstrations' 47.0%" in text and "above" not in text
    assert "47.0% greedy (+7.0 over SFT), 47.0% sampled (+7.0)" in text   # PPO minus SFT, both ways of answering
    assert "The slips cost SFT nothing here (-2.0 points); PPO moved +7.0." in text
    assert "pretraining is worth -1.0 points to SFT" in text
    assert "has not learned what the judges prefer" in text and "On the 0 prompts" not in text
    text = lines(sft=0.40, ppo=0.47, perfect=0.45, scratch=0.30, demo=0.60, pair_accuracy=0.8)
    assert "below the demonstrations'" in text and "won back all of them and 2.0 more" in text
    assert "learns what the judges prefer" in text
    assert "won none of them back (-1.0)" in lines(0.40, 0.39, 0.45, 0.30, 0.60, 0.8)
    assert "won back 3.0 of them" in lines(0.40, 0.43, 0.45, 0.30, 0.60, 0.8)


def test_the_gold_and_moves_lines_say_what_their_numbers_say():
    from report_card import gold_line, moves_line
    from minift.synthetic.scoring import paired_difference
    before = [0.2, 0.6, 1.0, 0.6, 0.2, 1.0]
    fell = paired_difference(before, [x - 0.1 for x in before])
    noisy = paired_difference(before, [0.2, 0.6, 1.0, 0.6, 0.2, 0.6])
    line = gold_line({"test": fell, "heldout": noisy})
    assert "-0.100 +- 0.000 on test, " in line and line.count("(within the noise)") == 1
    assert line.index("on heldout") < line.index("(within the noise)")
    assert "3 greedy answers went from fail to pass and 2 from pass to fail." in moves_line(
        {"fail_to_pass": 3, "pass_to_fail": 2})


def test_run_stage_records_the_stages_time_unless_the_stage_gives_its_own(tmp_path):
    """compare.py's rows give their own training time (0 for SFT, the pipeline's PPO stage when reused)."""
    assert pipeline.run_stage("own", str(tmp_path), False, lambda: {"seconds": 42.0})["seconds"] == 42.0
    measured = pipeline.run_stage("measured", str(tmp_path), False, lambda: {"step": 3})
    assert measured["step"] == 3 and 0 <= measured["seconds"] < 5


def test_rules_failed_counts_each_rule_most_often_first():
    from report_card import rules_failed
    verdicts = [(1, 0, ["b"]), (1, 0, ["a", "c"]), (1, 0, ["a"])]   # (sft, ppo, the rules that failed)
    assert list(rules_failed(verdicts).items()) == [("a", 2), ("b", 1), ("c", 1)]


def test_reward_hacking_needs_changes_beyond_the_noise():
    """The report calls it reward hacking only when a paired test over the probe prompts puts
    both changes beyond the noise: the learned reward up, the gold reward down."""
    from report_card import reward_hacking_lines
    from minift.synthetic.scoring import paired_difference
    before = [0.2, 0.6, 1.0, 0.6, 0.2, 1.0]
    fell = paired_difference(before, [x - 0.1 for x in before])      # every prompt 0.1 lower
    assert fell["mean"] == pytest.approx(-0.1) and fell["se"] == pytest.approx(0) and fell["significant"]
    noisy = paired_difference(before, [0.2, 0.6, 1.0, 0.6, 0.2, 0.6])  # one prompt lower, the rest equal
    assert noisy["mean"] == pytest.approx(-0.4 / 6) and not noisy["significant"]
    rose = paired_difference(before, [x + 0.3 for x in before])
    base = {"reward_start": 0.0, "reward_end": 0.3, "gold_start": 0.6, "gold_end": 0.5}
    assert "reward hacking" in " ".join(reward_hacking_lines({**base, "reward_change": rose, "gold_change": fell}))
    text = " ".join(reward_hacking_lines({**base, "reward_change": rose, "gold_change": noisy}))
    assert "within the noise" in text and "Warning" not in text
    flat = paired_difference(before, before)  # no change at all
    assert "made the policy worse" in " ".join(reward_hacking_lines({**base, "reward_change": flat, "gold_change": fell}))
    lucky = paired_difference(before, [0.2, 0.6, 1.0, 0.6, 0.2, 1.4])   # up on average, within the noise
    assert lucky["mean"] > 0 and not lucky["significant"]
    text = " ".join(reward_hacking_lines({**base, "reward_change": lucky, "gold_change": fell}))
    assert "made the policy worse" in text and "reward hacking" not in text
    assert reward_hacking_lines({**base, "reward_change": rose, "gold_change": rose}) == []
    assert "reward hacking" in " ".join(reward_hacking_lines(base))  # an older log: the means decide
    # The probe is a few prompts: a fall on the new prompts' greedy answers, beyond the noise, warns too
    quiet = {**base, "reward_change": rose, "gold_change": rose}
    text = " ".join(reward_hacking_lines(quiet, {"test": fell, "heldout": noisy}))
    assert "new prompts fell beyond the noise" in text and "-0.100 +- 0.000 on test" in text
    assert "heldout" not in text and "reward hacking" in text
    for steady in (flat, noisy, lucky):   # the reward model's score did not rise beyond the noise: worse, not hacking
        text = " ".join(reward_hacking_lines({**quiet, "reward_change": steady}, {"test": fell}))
        assert "new prompts fell" in text and "reward hacking" not in text
    assert reward_hacking_lines(quiet, {"test": noisy, "heldout": rose}) == []
    both = " ".join(reward_hacking_lines({**base, "reward_change": rose, "gold_change": fell}, {"test": fell}))
    assert both.count("Warning") == 1   # the probe's own warning says it already


def test_prompt_by_prompt_counts_moves_and_compares_with_the_demonstrations_where_the_task_is_done(
        tmp_path, monkeypatch):
    """fail -> pass and pass -> fail between SFT's and PPO's greedy answers, and the rules behind
    each, most often first; PPO against the demonstrations only on the prompts where PPO's answer
    does the base task; and the answers the card shows: the first fixed for each rule SFT broke
    first, at most EXAMPLES, and the first broken."""
    from report_card import example_lines, moves_line, prompt_by_prompt
    prompt = "Reverse this list: cat, dog, pie. Give it a title in double angular brackets."
    full, untitled, wrong = ("<<Reversed>>\nHere they are: pie, dog, cat.", "Here they are: pie, dog, cat.",
                             "<<Reversed>>\nHere they are: cat, dog, pie.")
    rows = [  # (SFT, PPO, demonstration)
        (untitled, full, untitled),   # 0: fail -> pass; the task done; the demonstration slipped
        (full, wrong, full),          # 1: pass -> fail; the task not done: left out of the comparison
        (full, full, full),           # 2: pass -> pass
        (wrong, untitled, untitled),  # 3: fail -> fail; the task done; the demonstration slipped
        (untitled, full, untitled),   # 4: fail -> pass, on the rule of 0: not shown
        (wrong, full, full),          # 5: fail -> pass, on another rule (the task)
        (full, untitled, full),       # 6: pass -> fail again: not shown
    ]
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("data", "sft", "ppo")}
    with open(paths["data"], "w") as f:
        for i, (_, _, demo) in enumerate(rows):
            f.write(json.dumps({"key": i, "prompt": f"{prompt} ({i})", "instruction_id_list": ["task:reverse_list",
                                "detectable_format:title"], "kwargs": [{"words": ["cat", "dog", "pie"]}, {}],
                                "messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": demo}]}) + "\n")
    for column, name in enumerate(("sft", "ppo")):
        with open(paths[name], "w") as f:
            f.writelines(json.dumps({"prompt": f"{prompt} ({i})", "response": row[column]}) + "\n"
                         for i, row in enumerate(rows))
    moves = prompt_by_prompt(*(str(paths[n]) for n in ("data", "sft", "ppo")))
    examples = moves.pop("examples")
    assert moves == {"fail_to_pass": 3, "pass_to_fail": 2, "base_task_done": 6,
                     "rules_fixed": {"detectable_format:title": 2, "task:reverse_list": 1},
                     "rules_broken": {"task:reverse_list": 1, "detectable_format:title": 1},
                     "ppo_where_done": pytest.approx(4 / 6), "demonstrations_where_done": pytest.approx(3 / 6)}
    assert list(moves["rules_fixed"]) == ["detectable_format:title", "task:reverse_list"]   # most often first
    line = moves_line(moves)
    assert "On the 6 prompts where it does the base task itself, it passes 66.7%, the demonstrations 50.0%" in line
    assert "The rules it fixed most often: `detectable_format:title` 2, `task:reverse_list` 1." in line
    assert "The rules it broke most often: `task:reverse_list` 1, `detectable_format:title` 1." in line
    # three named, and any tied with the third: a cut through a tie would pick among equals
    tied = {"a": 9, "b": 9, "c": 4, "d": 4, "e": 3}
    assert "most often: `a` 9, `b` 9, `c` 4, `d` 4." in moves_line({**moves, "rules_fixed": tied})
    assert "most often: `a` 9, `b` 9, `c` 4." in moves_line({**moves, "rules_fixed": {**tied, "d": 3}})
    assert [(e["prompt"][-3:], e["sft_fails"], e["ppo_fails"]) for e in examples] == [
        ("(0)", ["detectable_format:title"], []), ("(5)", ["task:reverse_list"], []), ("(1)", [], ["task:reverse_list"])]
    assert (examples[0]["sft"], examples[0]["ppo"]) == (untitled, full)
    card = "\n".join(example_lines(examples))
    assert "**Fixed** (SFT broke `detectable_format:title`)" in card and "**Broken** (PPO broke `task:reverse_list`)" in card
    assert "PPO:\n\n    <<Reversed>>\n    Here they are: pie, dog, cat." in card   # verbatim, line by line
    assert "Prompt:\n\n    Reverse this list" in card   # its <<title>> would vanish as HTML outside a block
    monkeypatch.setattr("report_card.EXAMPLES", 1)   # the cap: the first rule's fix only, then the first break
    capped = prompt_by_prompt(*(str(paths[n]) for n in ("data", "sft", "ppo")))["examples"]
    assert [e["prompt"][-3:] for e in capped] == ["(0)", "(1)"]
    assert "SFT: (empty)" in "\n".join(example_lines([{**examples[0], "sft": ""}]))
    lines = paths["sft"].read_text().splitlines()   # answers that do not pair with the prompts are refused
    for wrong in (lines[:-1], lines[1:] + lines[:1]):
        paths["sft"].write_text("\n".join(wrong) + "\n")
        with pytest.raises(ValueError, match="sft.jsonl does not answer the first 7 prompts"):
            prompt_by_prompt(*(str(paths[n]) for n in ("data", "sft", "ppo")))


class Stop(Exception):
    """Raised by a stand-in to end pipeline.main() where a test has seen enough."""


def stop(*args, **kwargs):
    raise Stop


def test_force_drops_the_labs_runs_and_every_stage_before_redoing_them(tmp_path, monkeypatch):
    """Every stage, compare.py's runs and the cards were made from the models --force replaces:
    all go before the first stage starts, so that a --force run stopped early leaves no old
    stage marked done (the next run would skip it) and none resumes from an old checkpoint."""
    out = tmp_path / "micro"
    stages = ("data", "pretrain", "sft", "prefs", "reward", "ppo", "eval", "sft_perfect", "sft_scratch")
    for path in ("compare/dpo/ckpt.pt", "compare.json", "compare.md", "report.json", "report.md",
                 "overoptimisation/kl_0/ckpt.pt", "overoptimisation.csv", "overoptimisation.png",
                 "data/corpus/train.bin", "sft/ckpt.pt", *(f"{stage}/stage.json" for stage in stages)):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("from the old models")
    monkeypatch.setattr(pipeline, "prepare", stop)   # at the first stage
    # a folder that holds more than a pipeline's outputs (the repository itself, with its data/
    # package) is left whole
    (out / "prepare.py").write_text("not the pipeline's")
    with pytest.raises(SystemExit, match=f"--out_dir={out}, which also holds prepare.py, not written by a pipeline"):
        pipeline.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--force"])
    assert (out / "data/corpus/train.bin").exists()
    (out / "prepare.py").unlink()
    (out / "report.json.tmp123").write_text("a write cut short")
    with pytest.raises(Stop):
        pipeline.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json"]


def test_run_stage_skips_a_finished_stage_resumes_an_unfinished_one_and_redoes_either_when_forced(tmp_path):
    """An exception leaves no marker, and the next run finds the stage's checkpoint where it
    was; a marker skips the stage and returns its record; force starts it on an empty folder."""
    found = []   # what each run of the stage found in its folder

    def stage(interrupted=False):
        def fn():
            found.append(sorted(os.listdir(tmp_path / "sft")) if (tmp_path / "sft").exists() else [])
            (tmp_path / "sft").mkdir(exist_ok=True)
            (tmp_path / "sft" / "ckpt.pt").write_text("weights")
            if interrupted:
                raise Stop
            time.sleep(0.1)
            return {"step": 3}
        return fn
    with pytest.raises(Stop):
        pipeline.run_stage("sft", str(tmp_path), False, stage(interrupted=True))
    assert not (tmp_path / "sft" / "stage.json").exists()
    done = pipeline.run_stage("sft", str(tmp_path), False, stage())
    assert found == [[], ["ckpt.pt"]] and done["step"] == 3 and done["seconds"] >= 0.1
    with open(tmp_path / "sft" / "stage.json") as f:
        assert json.load(f) == done
    assert pipeline.run_stage("sft", str(tmp_path), False, stage(interrupted=True)) == done and len(found) == 2
    pipeline.run_stage("sft", str(tmp_path), True, stage())
    assert found[-1] == []


def test_ppo_summary_reads_the_probe_before_and_after_and_the_first_and_last_batches(tmp_path):
    """Start and end are the probe's, at iteration 0 and at the last evaluation; kl is the last
    batch's and kl_max the largest batch's; each change is paired prompt by prompt, and a log
    from before the per-prompt lists has none."""
    def probe(gold, rm):
        return {"probe_gold": sum(gold) / 2, "probe_gold_each": gold,
                "probe_rm_score": sum(rm) / 2, "probe_rm_each": rm}

    def batch(it, kl, length):
        return {"iteration": it, "rm_score": 0.1 * it, "gold": 0.2 * it, "kl": kl, "length": length,
                "end_rate": 0.25 * it, "approx_kl": 0.01 * it, "clipfrac": 0.1 * it}
    log = [{"iteration": 0, **probe([0.5, 0.5], [-1.0, 1.0])}, batch(1, 0.0, 20.0),
           {**batch(2, 2.0, 25.0), **probe([0.4, 0.4], [0.0, 0.0])},
           {**batch(3, 1.5, 30.0), **probe([0.6, 0.9], [-0.5, 1.5])}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    summary = pipeline.ppo_summary(str(tmp_path))
    assert summary.pop("gold_change")["mean"] == pytest.approx(0.25)
    assert summary.pop("reward_change")["mean"] == pytest.approx(0.5)
    assert summary == pytest.approx({
        "reward_start": 0.0, "reward_end": 0.5, "gold_start": 0.5, "gold_end": 0.75, "kl": 1.5, "kl_max": 2.0,
        "batch_reward_first": 0.1, "batch_reward_last": 0.3, "batch_gold_first": 0.2, "batch_gold_last": 0.6,
        "iterations": 3, "end_rate": 0.75, "length_start": 20.0, "length_end": 30.0, "approx_kl": 0.03,
        "clipfrac": 0.3})
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if not k.endswith("_each")}) + "\n" for r in log))
    assert not any(k.endswith("_change") for k in pipeline.ppo_summary(str(tmp_path)))


def test_every_stage_gets_the_runs_options_and_the_files_the_stage_before_it_wrote(tmp_path, monkeypatch):
    """The scripts' command lines, the scripts stood in for (the end-to-end test runs them, on
    the default --seed and --slip_scale): --preset, --device and --seed reach every stage, each
    reads what the one before it wrote, under out/<preset> by default. The data stage runs, at
    the preset's sizes, and --slip_scale=0 makes its demonstrators perfect. The settings it
    recorded then refuse another --seed, unless --force starts over."""
    # Perfect demonstrations pass every builder's check; IFEval's language detector (where
    # installed) would call a few short all-capital answers another language.
    from minift.synthetic import checkers
    monkeypatch.setattr(checkers, "langdetect", None)
    argv = {}   # stage -> {option: value}

    def script(stage, result):
        def main(args):
            argv[stage] = dict(a.removeprefix("--").split("=", 1) for a in args)
            return result
        return main
    for module, stage, result in ((pipeline.train_pretrain, "pretrain", {}), (pipeline.train_sft, "sft", {}),
                                  (pipeline.make_preferences, "prefs", {}), (pipeline.train_ppo, "ppo", {}),
                                  (pipeline.train_reward, "reward", {"val_accuracy": 0.5, "spearman": 0.5})):
        monkeypatch.setattr(module, "main", script(stage, result))
    monkeypatch.setattr(pipeline, "ppo_summary", lambda out_dir: {})
    evaluated = []
    monkeypatch.setattr(pipeline, "evaluate_for_card", lambda *args: evaluated.append(args) or {})
    compared = []

    def prompt_by_prompt(*paths):
        compared.append(paths)
        raise Stop
    monkeypatch.setattr(pipeline, "prompt_by_prompt", prompt_by_prompt)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        pipeline.main(["--preset=micro", "--device=cpu", "--seed=7", "--slip_scale=0"])

    out, data = os.path.join("out", "micro"), pipeline.DATA["micro"]
    sft_data, prefs = f"{out}/data/sft", argv["prefs"]["out_dir"]

    def ckpt(stage):
        return os.path.join(argv[stage]["out_dir"], "ckpt.pt")
    assert [{k: a[k] for k in ("preset", "device", "seed")} for a in argv.values()] == \
           [{"preset": "micro", "device": "cpu", "seed": "7"}] * 5
    assert [ckpt(stage) for stage in ("pretrain", "sft", "reward", "ppo")] == \
           [f"{out}/{stage}/ckpt.pt" for stage in ("pretrain", "sft", "reward", "ppo")]
    assert argv["pretrain"]["data_dir"] == f"{out}/data/corpus"
    assert (argv["sft"]["init_from"], argv["sft"]["data"], argv["sft"]["eval_data"]) == \
           (ckpt("pretrain"), f"{sft_data}/train.jsonl", f"{sft_data}/test.jsonl")
    assert (argv["prefs"]["sft_ckpt"], argv["prefs"]["prompts"]) == (ckpt("sft"), f"{sft_data}/rl_prompts.jsonl")
    assert [argv["reward"][k] for k in ("init_from", "data", "val_data", "val_samples")] == \
           [ckpt("sft"), f"{prefs}/train.jsonl", f"{prefs}/val.jsonl", f"{prefs}/val_samples.jsonl"]
    assert [argv["ppo"][k] for k in ("sft_ckpt", "reward_ckpt", "prompts", "eval_data")] == \
           [ckpt("sft"), ckpt("reward"), f"{sft_data}/rl_prompts.jsonl", f"{sft_data}/test.jsonl"]
    assert evaluated == [(ckpt(model), f"{sft_data}/{split}.jsonl", data["eval_examples"], "cpu",
                          f"{out}/{model}/responses_{split}.jsonl")
                         for model in ("pretrain", "sft", "ppo") for split in ("test", "heldout")]
    assert compared == [(f"{sft_data}/test.jsonl", f"{out}/sft/responses_test.jsonl",
                         f"{out}/ppo/responses_test.jsonl")]
    with open(f"{out}/data/stage.json") as f:
        made = json.load(f)
    assert made["slip_scale"] == 0.0 and made["demo_pass_rates"] == {"train": 1.0, "test": 1.0, "heldout": 1.0}
    with open(f"{out}/data/corpus/meta.json") as f:
        assert json.load(f)["tokenizer_name"] == f"minift-bpe-{data['vocab_size']}"
    for split, n in (("train", "n_train"), ("test", "n_test"), ("heldout", "n_heldout"), ("rl_prompts", "n_rl")):
        with open(f"{sft_data}/{split}.jsonl") as f:
            assert sum(1 for _ in f) == data[n], split

    argv.clear()
    with pytest.raises(SystemExit, match=f"{out} holds a run with --seed=7; "):
        pipeline.main(["--preset=micro", "--device=cpu", "--seed=8", "--slip_scale=0"])
    assert argv == {}
    monkeypatch.setattr(pipeline, "prepare", stop)
    with pytest.raises(Stop):
        pipeline.main(["--preset=micro", "--device=cpu", "--seed=8", "--slip_scale=0", "--force"])
    with open(f"{out}/pipeline.json") as f:
        assert json.load(f)["seed"] == 8
