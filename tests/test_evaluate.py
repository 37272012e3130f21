"""evaluate.py's second-turn and sampled evaluation (minift.evaluation), with stand-in models;
which file --split reads."""
import os
import subprocess
import sys

import pytest

import evaluate
from conftest import ROOT, stand_in_generate
from minift.config import run
from minift.model import GPTConfig
from minift.tokenizer import Tokenizer, train_bpe


@pytest.fixture
def stand_in_generates(monkeypatch):
    """The stand-in models below answer from their own `generate` method, in place of the
    engine's, which runs a real GPT."""
    monkeypatch.setattr("minift.evaluation.generate", stand_in_generate)


def test_second_turn_evaluation_asks_after_another_records_exchange(stand_in_generates):
    """evaluate.py --earlier_turn: each prompt is asked after ANOTHER record's prompt and
    reference answer, rendered as one conversation through the chat template."""
    from minift.evaluation import earlier_exchanges, evaluate_records
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. Name a toy. A ball. " * 50, 300))
    records = [{"prompt": p, "instruction_id_list": [], "kwargs": [],
                "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
               for p, a in [("Name a pet.", "A cat."), ("Name a toy.", "A ball."), ("Name a pet.", "A dog.")]]
    earlier = earlier_exchanges(records)
    assert earlier == earlier_exchanges(records)  # deterministic
    for i, turns in enumerate(earlier):             # another record's exchange, never its own
        assert turns in [r["messages"] for k, r in enumerate(records) if k != i]

    class Recorder:  # a stand-in model that records the prompts it is asked to continue
        config = GPTConfig(block_size=256)
        training = False
        asked = []

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, prompts, max_new_tokens, **kw):
            Recorder.asked += prompts
            return [[tok.end] for _ in prompts]
    evaluate_records(Recorder(), tok, records, earlier=earlier)
    expected = [tok.render_prompt(e + [{"role": "user", "content": r["prompt"]}]) for e, r in zip(earlier, records)]
    assert sorted(Recorder.asked) == sorted(expected)
    with pytest.raises(ValueError, match="messages"):
        earlier_exchanges([{"prompt": "Name a pet."}, {"prompt": "Name a toy."}])


def test_an_answer_ends_at_the_end_of_a_reply_or_of_a_text(stand_in_generates):
    """A chat model closes its reply with <|end|>; a pretrained model ends its text with
    <|endoftext|>, and what it writes after that is another text. Either ends the answer,
    and neither is part of it; an answer that never ends is kept whole."""
    from minift.evaluation import generate_responses
    tok = Tokenizer.from_ranks(train_bpe("A cat. A dog. Once upon a time. " * 50, 300))

    class Ending:
        config = GPTConfig(block_size=256)
        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, prompts, max_new_tokens, **kw):
            assert set(kw["stop_tokens"]) == {tok.end, tok.eot}
            return [tok.encode("A cat.") + [tok.end], tok.encode("A dog.") + [tok.eot],
                    tok.encode("Once upon a time.")][:len(prompts)]
    assert generate_responses(Ending(), tok, ["Name a pet.", "Name a pet!", "Tell a story."],
                              batch_size=3) == ["A cat.", "A dog.", "Once upon a time."]


def test_sampled_pass_rates_count_answers_and_prompts(stand_in_generates):
    """evaluate.py --samples: a sample's pass rate is over all sampled answers, pass@k over
    prompts (any of its k answers passes), best-of-k over each prompt's highest-judged answer;
    prompts with no checkable instruction are skipped."""
    from minift.evaluation import pass_rates, sampled_pass_rates
    assert pass_rates([[True, False], [False, False], [True, True]]) == (0.5, pytest.approx(2 / 3))
    tok = Tokenizer.from_ranks(train_bpe("<<A title>> Name a pet. A cat. No title here. " * 50, 300))
    titled, plain = "<<A title>> A cat.", "No title here."
    # "Name a pet." passes with its first sample only, "Name a toy." never, "Name a cup." always
    plan = {"Name a pet.": [titled, plain], "Name a toy.": [plain, plain], "Name a cup.": [titled, titled],
            "Name a hat.": [titled, titled]}
    records = [{"prompt": p, "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]} for p in plan]
    records[-1]["instruction_id_list"] = ["language:response_language"]   # no checker: skipped

    class Planned:  # a stand-in model: the planned answers of each prompt, in turn
        config = GPTConfig(block_size=256)
        training = False
        seen = {}

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, prompts, max_new_tokens, temperature=0.0, **kw):
            assert temperature == 0.7 and kw["generator"] is not None   # sampled, not greedy
            out = []
            for ids in prompts:
                p = next(p for p in plan if tok.render_prompt([{"role": "user", "content": p}]) == ids)
                n = Planned.seen[p] = Planned.seen.get(p, -1) + 1
                out.append(tok.encode(plan[p][n]) + [tok.end])
            return out
    m = sampled_pass_rates(Planned(), tok, records, k=2, temperature=0.7)
    assert m["sample_prompt_strict"] == 0.5 and m["pass_at_k"] == pytest.approx(2 / 3) and m["samples"] == 2
    assert "best_of_k_prompt_strict" not in m

    def judge_by_length(longer_is_better):   # a stand-in reward model: it scores by length
        def judge(recs, answers):
            assert [r["prompt"] for r in recs] == list(plan) and all(len(a) == 2 for a in answers)
            return [[len(a) if longer_is_better else -len(a) for a in group] for group in answers]
        return judge
    Planned.seen = {}   # the same answers again
    m = sampled_pass_rates(Planned(), tok, records, 2, 0.7, judge=judge_by_length(True))
    assert m["best_of_k_prompt_strict"] == pytest.approx(2 / 3)   # picks the titled answer to "pet"
    Planned.seen = {}
    m = sampled_pass_rates(Planned(), tok, records, 2, 0.7, judge=judge_by_length(False))
    assert m["best_of_k_prompt_strict"] == pytest.approx(1 / 3)   # picks the plain one: only "cup" passes


def test_split_is_read_beside_a_pipeline_checkpoint(tmp_path, monkeypatch):
    """A bare `python evaluate.py` after `python pipeline.py` evaluates out/tiny/sft/ckpt.pt on
    that run's own test split; a checkpoint outside a pipeline run reads make_sft.py's."""
    class Asked(Exception):   # evaluate() stands in: we want only the file it is given
        pass

    def asked(ckpt_path, input_path, *args):
        raise Asked(ckpt_path, input_path)
    monkeypatch.setattr(evaluate, "evaluate", asked)
    monkeypatch.chdir(tmp_path)

    def file_read(argv):
        with pytest.raises(Asked) as e:
            evaluate.main(argv)
        return e.value.args[1]

    def error(argv):
        with pytest.raises(SystemExit) as e:
            run(lambda: evaluate.main(argv))
        assert str(e.value.code).startswith("error: ") and len(str(e.value.code).splitlines()) == 1
        return str(e.value.code)
    assert "--split=test" in error([]) and "pipeline.py" in error([])   # nothing there yet: what to run
    for folder in ("out/tiny/data/sft", "data/generated/sft"):
        os.makedirs(folder)
        for split in ("test", "heldout"):
            (tmp_path / folder / f"{split}.jsonl").write_text("")
    (tmp_path / "out/tiny/pipeline.json").write_text("{}")   # what marks a pipeline run's folder
    run_split = str(tmp_path / "out/tiny/data/sft")
    assert file_read([]) == os.path.join(run_split, "test.jsonl")
    assert file_read(["--split=heldout"]) == os.path.join(run_split, "heldout.jsonl")
    # a checkpoint deeper in the run, as compare.py's are, reads the run's split too
    assert file_read(["--ckpt=out/tiny/compare/dpo-1337/ckpt.pt"]) == os.path.join(run_split, "test.jsonl")
    assert file_read(["--ckpt=out/sft/ckpt.pt"]) == "data/generated/sft/test.jsonl"
    assert file_read(["--input=data/generated/sft/heldout.jsonl"]) == "data/generated/sft/heldout.jsonl"
    line = error(["--split=tset"])   # a typo: the choices, not a file to generate
    assert "--split=tset" in line and "test or heldout" in line and "make_sft" not in line


def test_sampling_temperature_is_ppos():
    """evaluate.py samples as PPO's rollouts do, by default: one number, train_ppo.Config's.
    (A process of its own: the scripts read it once, when imported.)"""
    code = ("import inspect, train_ppo; train_ppo.Config.temperature = 0.9; import evaluate; "
            "print(evaluate.Config().temperature, "
            "inspect.signature(evaluate.evaluate).parameters['temperature'].default)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["0.9", "0.9"], r.stderr[-2000:]


def test_two_runs_results_go_to_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert evaluate.results_dir("out/eval", "out/tiny/sft/ckpt.pt") == os.path.join("out", "eval", "tiny", "sft")
    assert evaluate.results_dir("out/eval", "out/tiny_seed2/sft/ckpt.pt") == os.path.join("out/eval", "tiny_seed2", "sft")
    assert evaluate.results_dir("out/eval", "runs/a/ckpt.pt") == os.path.join("out/eval", "runs", "a")
    assert evaluate.results_dir("out/eval", "ckpt.pt") == os.path.normpath("out/eval")
    elsewhere = tmp_path.parent / "models" / "sft" / "ckpt.pt"
    assert evaluate.results_dir("out/eval", str(elsewhere)) == os.path.join("out/eval", "sft")
