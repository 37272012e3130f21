"""evaluate.py's second-turn and sampled evaluation (minift.evaluation), with stand-in models:
answers in the prompts' order, over-long prompts, the responses file, the samples' seed;
which file --split reads."""
import json
import os
import subprocess
import sys

import pytest
import torch

import evaluate
from conftest import ROOT, stand_in_generate
from minift.config import run
from minift.model import GPT, GPTConfig
from minift.synthetic import checkers
from minift.tokenizer import Tokenizer, save_ranks, train_bpe


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
    # a record that opens with an earlier exchange of its own (the chat-practice records): its
    # LAST exchange is the one asked before
    chats = [{**r, "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                                *r["messages"]]} for r in records]
    assert all(turns in [d["messages"][-2:] for d in chats] for turns in earlier_exchanges(chats))

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


class Echo:
    """A stand-in model that answers each prompt with the user's message (the ids between
    <|endoftext|><|user|> and <|end|><|assistant|>), and records the prompts of each batch."""
    def __init__(self, block_size=256):
        self.config, self.training, self.batches = GPTConfig(block_size=block_size), False, []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, prompts, max_new_tokens, **kw):
        self.batches.append(prompts)
        return [p[2:-2] + [kw["stop_tokens"][0]] for p in prompts]


def end_with(word):   # an IFEval record that an answer passes when it ends with `word`
    return {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": word}]}


def test_answers_come_back_in_the_order_of_their_prompts(stand_in_generates):
    """Prompts are batched by length, shortest first, yet each answer lands beside its own
    prompt and is scored against that prompt's instruction (each passes only its own)."""
    from minift.evaluation import evaluate_records, generate_responses
    tok = Tokenizer.from_ranks(train_bpe("Name a pet, a toy and a cup. A cat. " * 50, 300))
    prompts = ["Name a pet, a toy and a cup, please.", "Hi.", "Name a pet.", "Name a pet and a toy.", "Cat"]
    model = Echo()
    assert generate_responses(model, tok, prompts, batch_size=2) == prompts
    lengths = [len(ids) for batch in model.batches for ids in batch]
    assert len(model.batches) == 3 and lengths == sorted(lengths)
    records = [{"prompt": p, **end_with(p.split()[-1])} for p in prompts]
    metrics, responses = evaluate_records(Echo(), tok, records, batch_size=2)
    assert responses == prompts and metrics["prompt_strict"] == 1.0


def test_a_prompt_too_long_for_the_context_keeps_its_end(stand_in_generates):
    """The model reads block_size - max_new_tokens ids before its answer. A longer prompt loses
    its start, never the end of its request nor the <|assistant|> cue, and is counted as cut;
    a prompt of exactly that many ids is read whole and not counted."""
    from minift.evaluation import evaluate_records
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. Name a toy, a cup and a hat. " * 50, 300))
    short, long = "Name a pet.", "Name a toy, a cup and a hat. Name a pet."
    fits = len(tok.render_prompt([{"role": "user", "content": short}]))
    model = Echo(block_size=fits + 8)
    records = [{"prompt": p, **end_with("pet.")} for p in (long, short)]
    metrics, _ = evaluate_records(model, tok, records, max_new_tokens=8)
    whole = tok.render_prompt([{"role": "user", "content": long}])
    kept = whole[-fits:]
    assert len(whole) > fits and tok.decode(kept).endswith("Name a pet.<|end|><|assistant|>")
    asked = sorted(ids for batch in model.batches for ids in batch)
    assert asked == sorted([tok.render_prompt([{"role": "user", "content": short}]), kept])
    assert (metrics["prompts_cut"], metrics["prompt_token_limit"]) == (1, fits)


def tiny_checkpoint(tmp_path, text):
    """An untrained one-layer GPT with a BPE tokenizer of `text`: a checkpoint evaluate.py loads."""
    ranks = train_bpe(text, 300)
    save_ranks(str(tmp_path / "tok.tiktoken"), ranks)
    tok = Tokenizer.from_ranks(ranks)
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=128, n_layer=1, n_head=1, n_embd=16)
    torch.manual_seed(0)
    torch.save({"kind": "sft", "model": GPT(config).state_dict(), "model_config": config.__dict__,
                "tokenizer": {"path": str(tmp_path / "tok.tiktoken"), **tok.identity}}, tmp_path / "ckpt.pt")
    return str(tmp_path / "ckpt.pt")


def test_the_responses_file_is_ifevals_in_the_input_order(tmp_path, monkeypatch):
    """evaluate.py writes one {"prompt", "response"} object per line, as IFEval's scorer reads
    them (input_response_data), in the input file's order, each prompt beside its own answer."""
    ckpt = tiny_checkpoint(tmp_path, "Name a pet, a toy and a cup. A cat. " * 50)
    prompts = ["Name a pet, a toy and a cup, please.", "Hi.", "Name a pet and a toy.", "Cat"]
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps({"key": i, "prompt": p, **end_with(p.split()[-1])}) + "\n"
                            for i, p in enumerate(prompts)))
    monkeypatch.setattr("minift.evaluation.generate", lambda model, prompts, max_new_tokens, **kw: Echo().generate(
        prompts, max_new_tokens, **kw))
    out = tmp_path / "responses.jsonl"
    metrics = evaluate.main([f"--ckpt={ckpt}", f"--input={path}", f"--output={out}", "--batch_size=2",
                             "--max_new_tokens=8", "--device=cpu", f"--out_dir={tmp_path / 'eval'}"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": p, "response": p} for p in prompts]
    assert metrics["prompt_strict"] == 1.0


def test_samples_are_drawn_from_the_seed(tmp_path, monkeypatch):
    """evaluate.py --samples: the same --seed draws the same answers, another seed others."""
    ckpt = tiny_checkpoint(tmp_path, "Name a pet, a toy and a cup. A cat. " * 50)
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps({"key": i, "prompt": p, **end_with(".")}) + "\n"
                            for i, p in enumerate(["Name a pet.", "Name a toy.", "Name a cup."])))

    def coin(model, prompts, max_new_tokens, temperature=0.0, generator=None, **kw):
        """A stand-in sampler: each sampled answer repeats the request (which passes) or is
        empty, by a draw from the generator it is given."""
        answers = Echo().generate(prompts, max_new_tokens, **kw)
        if temperature == 0:
            return answers
        return [a if torch.rand((), generator=generator) < 0.5 else a[-1:] for a in answers]
    monkeypatch.setattr("minift.evaluation.generate", coin)

    def rate(seed):
        return evaluate.main([f"--ckpt={ckpt}", f"--input={path}", "--samples=4", f"--seed={seed}",
                              "--max_new_tokens=8", "--device=cpu", f"--out_dir={tmp_path / 'eval'}"]
                             )["sample_prompt_strict"]
    rates = [rate(seed) for seed in range(5)]
    assert rate(3) == rates[3] and len(set(rates)) > 1


def test_a_null_checker_argument_is_named_as_null():
    """IFEval's HF export writes every argument name, unused ones null: a null that a checker
    reads is named as such, not listed among the arguments the record has."""
    from minift.evaluation import check_checker_arguments
    record = {"key": 7, "prompt": "Describe a cat.", "instruction_id_list": ["length_constraints:number_words"],
              "kwargs": [{"num_words": None, "relation": "at least", "keywords": None}]}
    with pytest.raises(ValueError) as e:
        check_checker_arguments([record], "in.jsonl")
    assert str(e.value).startswith('in.jsonl, record 1 (key 7): field "kwargs"[0] has relation, without '
                                   'num_words (null); expected the arguments of "length_constraints:number_words"')
    record["kwargs"] = [{"num_words": None, "relation": None}]
    with pytest.raises(ValueError, match=r'has only nulls, without num_words \(null\), relation \(null\);'):
        check_checker_arguments([record], "in.jsonl")


def test_a_checker_argument_of_the_wrong_type_is_named_with_what_it_takes():
    """A string where a count belongs, a relation misspelt, a word where a list belongs: each
    stops before generation with its record, field and the type its checker reads."""
    from minift.evaluation import check_checker_arguments

    def refusal(iid, kwargs):
        record = {"key": 3, "prompt": "Describe a cat.", "instruction_id_list": [iid], "kwargs": [kwargs]}
        with pytest.raises(ValueError) as e:
            check_checker_arguments([record], "in.jsonl")
        return str(e.value)
    assert refusal("startend:end_checker", {"end_phrase": 5}) == (
        'in.jsonl, record 1 (key 3): field "kwargs"[0]["end_phrase"] is 5; expected a string, '
        'as "startend:end_checker" reads it')
    assert 'is "2"; expected a whole number' in refusal("detectable_format:number_highlighted_sections",
                                                        {"num_highlights": "2"})
    assert 'is true; expected a whole number' in refusal("detectable_format:number_bullet_lists",
                                                         {"num_bullets": True})
    assert '["relation"] is "atleast"; expected "less than" or "at least"' in refusal(
        "length_constraints:number_words", {"num_words": 5, "relation": "atleast"})
    assert '["forbidden_words"] is "cat"; expected an array of strings' in refusal(
        "keywords:forbidden_words", {"forbidden_words": "cat"})
    assert 'is an array of 2 items; expected an array of strings' in refusal(
        "keywords:existence", {"keywords": ["cat", 3]})
    # the right types pass, IFEval's own ids too, and an argument no checker reads is not judged
    check_checker_arguments([{"key": 4, "prompt": "Describe a cat.", "kwargs": [
        {"num_words": 5, "relation": "at least", "num_highlights": "unused"},
        {"letter": "a", "let_frequency": 3, "let_relation": "less than"}],
        "instruction_id_list": ["length_constraints:number_words", "keywords:letter_frequency"]}], "in.jsonl")


def test_sampled_pass_rates_count_answers_and_prompts(stand_in_generates, monkeypatch):
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
    # "Name a toy." also forbids commas, which its answers obey: a prompt passes only if all its
    # instructions do, so it still never passes
    records[1] |= {"instruction_id_list": ["detectable_format:title", "punctuation:no_comma"], "kwargs": [{}, {}]}
    monkeypatch.setattr(checkers, "langdetect", None)                       # (as where langdetect is missing)

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

    def asked(ckpt_path, input_path, *args, **kwargs):
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
    assert file_read(["--ckpt=out/sft/ckpt.pt", "--split=heldout"]) == "data/generated/sft/heldout.jsonl"
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
