"""
Talk to any minift checkpoint.

    python sample.py --ckpt=out/tiny/pretrain/ckpt.pt --prompt="Once upon a time"
    echo "Lily had a red kite." | python sample.py --ckpt=out/tiny/pretrain/ckpt.pt
    python sample.py --ckpt=out/tiny/sft/ckpt.pt --chat          # multi-turn chat REPL
    python sample.py --ckpt=out/tiny/reward/ckpt.pt --prompt="Describe a cat." --response="The cat is soft."

A language-model checkpoint (pretrain, SFT, PPO, DPO, GRPO) generates, streaming tokens as
they come; all but a pretrained one answer through the chat template. A reward checkpoint
scores a (prompt, response) pair, which is a quick way to poke at what it has learned.
"""

import random
import sys
from dataclasses import dataclass

import torch

from minift.checkpoint import TRAIN_ONE_FIRST, build_model, load_checkpoint, tokenizer_for
from minift.config import cli_config, run
from minift.engine import generate_stream
from minift.evaluation import prompt_room, render_prompts
from minift.model import ScalarModel
from minift.tokenizer import StreamDecoder
from minift.training import pick_device
from train_reward import render, score_all


@dataclass
class Config:
    ckpt: str = "out/tiny/sft/ckpt.pt"
    prompt: str = ""            # empty: read it from stdin
    response: str = ""          # with a reward checkpoint: the response to score
    chat: bool = False          # multi-turn REPL with the chat template
    raw: bool = False           # treat an SFT/PPO checkpoint as a plain text continuer
    num_samples: int = 1
    max_new_tokens: int = 200
    temperature: float = 0.8    # 0 = greedy
    top_k: int = 0              # 0 = off
    top_p: float = 0.95         # 1.0 = off
    seed: int = -1              # -1: a fresh seed each run, printed so that a sample can be drawn again
    device: str = "auto"        # cuda if there is one, else mps, else cpu


def stream(model, tokenizer, prompt_ids, cfg, generator=None):
    """Generate one sample, printing text as soon as its bytes form whole characters. It
    ends at the end of a reply or of a text (tokenizer.stops)."""
    decoder, out = StreamDecoder(tokenizer), []
    for tokens in generate_stream(model, [prompt_ids], cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_k=cfg.top_k, top_p=cfg.top_p, stop_tokens=tokenizer.stops,
                                  pad_token=tokenizer.pad, generator=generator):
        token = tokens[0].item()
        if token in tokenizer.stops:
            break
        out.append(token)
        print(decoder.push(token), end="", flush=True)
    print(decoder.flush())
    return tokenizer.decode(out)


def read_prompt(cfg):
    """--prompt, or else the text piped in; on a terminal, an error rather than a silent wait."""
    if cfg.prompt:
        return cfg.prompt
    if sys.stdin.isatty():
        raise SystemExit('error: no --prompt given: pass --prompt="...", or pipe the text in: '
                         'echo "..." | python sample.py --ckpt=...')
    return sys.stdin.read().strip()


def check_options(cfg, kind):
    """Refuse an option that this checkpoint or mode would silently ignore: --chat, --raw or
    --num_samples with a reward model, --response without one, and --prompt, --raw or
    --num_samples with --chat."""
    if kind == "reward":
        if cfg.chat:
            raise SystemExit(f"error: {cfg.ckpt} is a reward model, which scores an answer and cannot --chat; "
                             f'score one with --prompt="..." --response="...", or chat with a language model, '
                             f"e.g. --ckpt=out/tiny/sft/ckpt.pt")
        for option in (cfg.raw and "--raw", cfg.num_samples > 1 and f"--num_samples={cfg.num_samples}"):
            if option:
                raise SystemExit(f"error: {option} does not go with a reward model ({cfg.ckpt}), which scores the "
                                 f"one --response it is given in the chat template; drop {option}")
        return
    if cfg.response:
        raise SystemExit(f"error: --response is read only with a reward model, and {cfg.ckpt} is a {kind} "
                         f"checkpoint, which writes its own answer; leave --response out, or pass a reward "
                         f"checkpoint, e.g. --ckpt=out/tiny/reward/ckpt.pt")
    if cfg.chat:
        for option, why in ((cfg.prompt and "--prompt", "you type each message at the you> prompt"),
                            (cfg.raw and "--raw", "a chat goes through the chat template, which --raw turns off"),
                            (cfg.num_samples > 1 and f"--num_samples={cfg.num_samples}",
                             "a chat has one reply a turn")):
            if option:
                raise SystemExit(f"error: {option} does not go with --chat ({why}); drop one of them")


def chat(model, tokenizer, cfg, generator):
    """A REPL: the whole conversation is re-rendered with the chat template each turn."""
    room = prompt_room(model.config.block_size, cfg.max_new_tokens)   # the reply gets max_new_tokens
    print("Chat with the model. Empty line, Ctrl-D or Ctrl-C to quit, /reset to start over.")
    messages = []
    while True:
        try:
            user = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):   # quitting a chat is no failure: nothing is left to resume
            print()
            break
        if not user:
            break
        if user == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": user})
        # Too long: forget the oldest exchange (a message and its reply) until the rest fits, so
        # the conversation still starts with the user's turn; the newest message always stays,
        # and only its end if it alone is too long.
        while len(messages) > 1 and len(tokenizer.render_prompt(messages)) > room:
            messages = messages[2:]
        prompt = render_prompts(tokenizer, [messages], room)[0]
        print("bot> ", end="", flush=True)
        try:
            reply = stream(model, tokenizer, prompt, cfg, generator)
        except KeyboardInterrupt:   # Ctrl-C during a reply quits too
            print()
            break
        messages.append({"role": "assistant", "content": reply})


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    ckpt = load_checkpoint(cfg.ckpt, hint=TRAIN_ONE_FIRST, option="ckpt")
    check_options(cfg, ckpt["kind"])
    tokenizer = tokenizer_for(ckpt, cfg.ckpt)
    device = pick_device(cfg.device)

    if ckpt["kind"] == "reward":
        prompt = read_prompt(cfg)
        if not cfg.response.strip():   # else the reward of an empty answer, which nobody asked for
            raise SystemExit(f"error: {cfg.ckpt} is a reward model, which scores a response to the prompt; "
                             f'pass it, not empty, as --response="..."')
        model = build_model(ckpt, ScalarModel).to(device).eval()
        block_size = model.gpt.config.block_size
        seq = render(tokenizer, prompt, cfg.response)
        if len(seq) > block_size:   # keep the end, as evaluate.py's judge does: the score is read at the last token
            print(f"note: prompt and response are {len(seq)} tokens with the template, more than the reward model's "
                  f"context of {block_size}; scoring the last {block_size}", file=sys.stderr)
            seq = seq[-block_size:]
        raw = score_all(model, [seq], tokenizer, device, batch_size=1)   # as train_reward.py scores
        score = model.normalize(raw.to(device)).item()
        print(f"reward: {score:+.3f}  (normalised: SFT answers average 0 with std 1)")
        return score

    prompt = "" if cfg.chat else read_prompt(cfg)   # first: a missing prompt stops before anything is printed
    seed = cfg.seed if cfg.seed >= 0 else random.SystemRandom().randrange(2 ** 31)
    if cfg.seed < 0 and cfg.temperature > 0:  # stderr: stdout stays the text
        print(f"seed {seed} (--seed={seed} draws this sample again)", file=sys.stderr)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = build_model(ckpt).to(device).eval()
    is_chat_model = ckpt["kind"] != "pretrain" and not cfg.raw   # every stage after pretraining answers in turns
    if cfg.chat:
        if ckpt["kind"] == "pretrain":   # allowed: seeing why SFT is needed is a lesson in itself
            print(f"note: {cfg.ckpt} is a pretrained model, which never saw the chat template; expect text "
                  "that continues, not answers (an SFT checkpoint answers)", file=sys.stderr)
        return chat(model, tokenizer, cfg, generator)
    if is_chat_model:
        prompt_ids = tokenizer.render_prompt([{"role": "user", "content": prompt}])
    else:
        prompt_ids = [tokenizer.eot] + tokenizer.encode(prompt)
    room = model.config.block_size - len(prompt_ids)
    if room < 1:
        template = " with the template" if is_chat_model else ""
        given = "--prompt" if cfg.prompt else "the prompt piped in"
        raise SystemExit(f"error: {given} is {len(prompt_ids)} tokens{template}, and the model's context is "
                         f"{model.config.block_size}: shorten it")
    if room < cfg.max_new_tokens:
        print(f"note: {room} tokens of context left after the prompt; the sample stops there", file=sys.stderr)
    samples = []
    for i in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1}")
        if not is_chat_model:   # each sample continues the prompt: print it before each one
            print(prompt, end="")
        samples.append(stream(model, tokenizer, prompt_ids, cfg, generator))
    return samples


if __name__ == "__main__":
    run(main)
