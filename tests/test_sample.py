"""sample.py: what it feeds the engine for each kind of checkpoint, what it prints while
streaming, the chat's history when it outgrows the context, and a reward model's score.
The checkpoints are random GPTs over a byte tokenizer (token id = byte), made in a second."""
import dataclasses
import io
import sys

import pytest
import torch

import sample
from minift.checkpoint import build_model, load_checkpoint, save_checkpoint
from minift.engine import generate
from minift.model import GPT, GPTConfig, ScalarModel, answer_positions
from minift.tokenizer import Tokenizer
from train_reward import render

TOK = Tokenizer.from_ranks({bytes([i]): i for i in range(256)})
BLOCK = 64


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One checkpoint of each kind. The weights are scaled up so that answers depend on the
    prompt (see test_engine.wandering_model); the reward model's normalisation is not the
    identity, so that a score left unnormalised would show."""
    d = tmp_path_factory.mktemp("sample")
    config = GPTConfig(vocab_size=TOK.n_vocab, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    paths = {}
    for kind in ("pretrain", "sft", "ppo", "reward"):
        torch.manual_seed(0)
        model = ScalarModel(config) if kind == "reward" else GPT(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.mul_(1 if "ln" in name else 8)
            if kind == "reward":
                model.gain.fill_(2.0)
                model.bias.fill_(0.5)
        paths[kind] = str(d / f"{kind}.pt")
        save_checkpoint(paths[kind], {"kind": kind, "step": 1, "model": model.state_dict(),
                                      "model_config": dataclasses.asdict(config), "tokenizer": TOK.to_record()})
    return paths


def engine_answer(path, prompt_ids, n, **kw):
    """What generate() answers, without its stop token: the text sample.py must give."""
    model = build_model(load_checkpoint(path)).eval()
    ids = generate(model, [prompt_ids], n, stop_tokens=TOK.stops, pad_token=TOK.pad, **kw)[0]
    return TOK.decode([t for t in ids if t not in TOK.stops])


def test_each_kind_answers_from_its_own_prompt(ckpts):
    """A pretrained model (or any with --raw) continues <|endoftext|> + the text; every later stage
    answers through the chat template. Greedy and sampled (top-k, top-p, seed) alike."""
    plain = [TOK.eot] + TOK.encode("Once")
    turn = TOK.render_prompt([{"role": "user", "content": "Once"}])
    sampled = dict(temperature=1.0, top_k=20, top_p=0.9)
    for kind, extra, ids in (("pretrain", [], plain), ("sft", [], turn), ("ppo", [], turn), ("sft", ["--raw"], plain)):
        args = [f"--ckpt={ckpts[kind]}", "--prompt=Once", "--max_new_tokens=12", "--device=cpu"] + extra
        assert sample.main(args + ["--temperature=0"]) == [engine_answer(ckpts[kind], ids, 12, temperature=0)], kind
        assert sample.main(args + ["--temperature=1", "--top_k=20", "--top_p=0.9", "--seed=3"]) == [
            engine_answer(ckpts[kind], ids, 12, generator=torch.Generator().manual_seed(3), **sampled)], kind
    # the two prompts give different answers, so the comparisons above tell them apart
    assert engine_answer(ckpts["sft"], plain, 12, temperature=0) != engine_answer(ckpts["sft"], turn, 12, temperature=0)


def test_streaming_prints_whole_characters_and_stops_at_a_stop_token(ckpts, monkeypatch, capsys):
    """The printed text is the returned one: a character split over tokens is printed once it is
    whole, nothing at or after a stop token is printed, and a character left unfinished at the
    end prints as U+FFFD, as decode() gives it."""
    def scripted(*tokens):
        return lambda *a, **kw: iter([torch.tensor([t]) for t in tokens])
    model, cfg = build_model(load_checkpoint(ckpts["sft"])).eval(), sample.Config()
    for tokens, text in (((*"a🙂".encode(), TOK.end, *b"xyz"), "a🙂"),   # the engine goes on emitting stops;
                         ((*b"hi", TOK.eot, TOK.end), "hi"),             # a script that did not would show
                         ((*b"b", 0xF0, 0x9F), "b\ufffd")):
        monkeypatch.setattr(sample, "generate_stream", scripted(*tokens))
        assert sample.stream(model, TOK, [TOK.eot], cfg) == text
        assert capsys.readouterr().out == text + "\n"


def test_every_sample_of_a_continuation_starts_with_the_prompt(ckpts, capsys):
    args = [f"--ckpt={ckpts['pretrain']}", "--prompt=Once", "--max_new_tokens=5", "--seed=1", "--device=cpu"]
    samples = sample.main(args + ["--num_samples=2"])
    assert len(samples) == 2
    assert capsys.readouterr().out == "".join(f"--- sample {i + 1}\nOnce{s}\n" for i, s in enumerate(samples))
    # two draws in a row from one generator seeded once: different samples, each reproducible
    cfg, g = sample.Config(), torch.Generator().manual_seed(1)
    want = [engine_answer(ckpts["pretrain"], [TOK.eot] + TOK.encode("Once"), 5, generator=g,
                          temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) for _ in range(2)]
    assert samples == want and want[0] != want[1]
    one = sample.main(args)
    assert capsys.readouterr().out == f"Once{one[0]}\n"
    answer = sample.main([f"--ckpt={ckpts['sft']}", "--prompt=Once", "--max_new_tokens=5", "--seed=1"])
    assert capsys.readouterr().out == f"{answer[0]}\n"   # an answer does not repeat the question


def test_chat_forgets_its_oldest_exchanges_first(ckpts, monkeypatch):
    """Each turn's prompt is the whole conversation when it fits in the context less the reply's
    max_new_tokens; else it loses as many of its oldest exchanges as it must, and still starts
    with a user's turn. /reset forgets everything."""
    asked = []
    monkeypatch.setattr(sample, "stream", lambda model, tok, prompt, cfg, generator: asked.append(prompt) or "ok.")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\nwhat is a cat\nand a dog\n"
                                                 "tell me a story about a frog\n/reset\nbye\n"))
    sample.main([f"--ckpt={ckpts['sft']}", "--chat", "--max_new_tokens=20"])
    room = BLOCK - 20

    def turns(*said):
        return TOK.render_prompt([{"role": "user" if i % 2 == 0 else "assistant", "content": m}
                                  for i, m in enumerate(said)])
    assert len(turns("hello", "ok.", "how are you", "ok.", "what is a cat")) > room   # the first one to cut
    assert len(turns("and a dog", "ok.", "tell me a story about a frog")) > room
    assert asked == [turns("hello"),
                     turns("hello", "ok.", "how are you"),
                     turns("how are you", "ok.", "what is a cat"),
                     turns("what is a cat", "ok.", "and a dog"),
                     turns("tell me a story about a frog"),   # two exchanges go at once
                     turns("bye")]
    assert all(len(p) <= room for p in asked)


@pytest.mark.parametrize("where", ["at the prompt", "during a reply"])
def test_ctrl_c_quits_a_chat_cleanly(ckpts, monkeypatch, where):
    """Ctrl-C ends a chat as Ctrl-D does: no error, and no advice to resume what nothing saved."""
    def ctrl_c(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr("builtins.input", ctrl_c if where == "at the prompt" else lambda prompt: "hello")
    if where == "during a reply":
        monkeypatch.setattr(sample, "stream", ctrl_c)
    assert sample.main([f"--ckpt={ckpts['sft']}", "--chat", "--max_new_tokens=20"]) is None


def test_chat_with_a_pretrained_model_says_it_never_saw_the_template(ckpts, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for kind in ("pretrain", "sft"):
        sample.main([f"--ckpt={ckpts[kind]}", "--chat", "--max_new_tokens=20"])
        assert ("never saw the chat template" in capsys.readouterr().err) == (kind == "pretrain")


def test_a_reward_model_scores_on_the_normalised_scale(ckpts):
    score = sample.main([f"--ckpt={ckpts['reward']}", "--prompt=Describe a cat.", "--response=It purrs."])
    model = build_model(load_checkpoint(ckpts["reward"]), ScalarModel).eval()
    ids = torch.tensor([render(TOK, "Describe a cat.", "It purrs.")])
    with torch.no_grad():
        mask = torch.ones_like(ids)
        expected = model.reward(ids, mask, answer_positions(ids, TOK.assistant, mask))
        raw = model.reward(ids, mask, answer_positions(ids, TOK.assistant, mask), normalized=False)
    assert score == pytest.approx(expected.item(), abs=1e-4) and score != pytest.approx(raw.item(), abs=1e-2)


def test_a_prompt_needs_one_token_of_room(ckpts, capsys, monkeypatch):
    """A prompt that fills the whole context gets an error, not an empty sample; one token
    shorter, it gets one token."""
    args = [f"--ckpt={ckpts['pretrain']}", "--max_new_tokens=5", "--temperature=0"]
    with pytest.raises(SystemExit, match="--prompt is 64 tokens, and the model.s context is 64"):   # raw text
        sample.main(args + ["--prompt=" + "a" * (BLOCK - 1)])   # with <|endoftext|> before it
    monkeypatch.setattr(sys, "stdin", io.StringIO("a" * (BLOCK - 1)))   # the same text piped in: no --prompt named
    with pytest.raises(SystemExit, match="the prompt piped in is 64 tokens"):
        sample.main(args)
    ids = [TOK.eot] + TOK.encode("a" * (BLOCK - 2))
    expected = engine_answer(ckpts["pretrain"], ids, 1, temperature=0)
    assert sample.main(args + ["--prompt=" + "a" * (BLOCK - 2)]) == [expected]
    assert "1 tokens of context left" in capsys.readouterr().err
