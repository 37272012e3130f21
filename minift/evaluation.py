"""
Instruction-following evaluation: generate answers to IFEval-style records with batched
greedy decoding through the KV cache, then score them with the checkers in code
(minift/synthetic/scoring.py). Used by evaluate.py, by train_sft.py during training, and by the
pipeline's report card; sampled answers (sample_answers) serve the preference data, the
rejection-sampling bench and evaluate.py --samples.
"""

from random import Random

import torch

from minift.engine import generate
from minift.formats import described, load_ifeval_option
from minift.synthetic.scoring import KWARG_NAMES, aggregate, kwarg_expected, missing_kwargs, score


def check_checker_arguments(records, path):
    """Refuse records whose kwargs lack an argument that their instruction's checker reads (a
    misspelt name, or null), or give one of the wrong type ("2" for 2), before any answer is
    generated: scoring would otherwise fail only after all of them were. The file's loader
    (minift.formats) knows no checkers, so this check lives here, beside the scoring."""
    for n, rec in enumerate(records, start=1):
        for i, (iid, kwargs) in enumerate(zip(rec["instruction_id_list"], rec["kwargs"])):
            where = f'{path}, record {n} (key {rec["key"]!r}): field "kwargs"[{i}]'
            lacking = missing_kwargs(iid, kwargs)
            if lacking:
                # a null counts as lacking, so "has" lists only the names with a value
                given = sorted(k for k, v in kwargs.items() if v is not None)
                has = f"has {', '.join(given)}" if given else "has only nulls" if kwargs else "is empty"
                without = ", ".join(f"{k} (null)" if k in kwargs else k for k in lacking)
                raise ValueError(f'{where} {has}, without {without}; expected the arguments of "{iid}": '
                                 f'{", ".join(KWARG_NAMES[iid])}')
            for name in KWARG_NAMES.get(iid, ()):
                expected = kwargs.get(name) is not None and kwarg_expected(name, kwargs[name])
                if expected:
                    raise ValueError(f'{where}["{name}"] {described(kwargs[name])}; expected {expected}, '
                                     f'as "{iid}" reads it')


def load_scorable_option(path, option, hint="", limit=None):
    """IFEval records named by a script's --option (minift.formats.load_ifeval_option), the
    first `limit` of them, their checker arguments checked too: everything the checkers will
    read, before any work."""
    records = load_ifeval_option(path, option, hint)[:limit]
    check_checker_arguments(records, path)
    return records


def load_eval_data(path, limit):
    """A training script's --eval_data: its first `limit` IFEval records, checked before any
    training, or none when the option is empty."""
    return load_scorable_option(path, "eval_data", "--eval_data= trains without evaluating", limit) if path else []


def prompt_room(block_size, max_new_tokens):
    """How many of the context's `block_size` tokens a prompt may fill: the answer needs
    `max_new_tokens` after it."""
    room = block_size - max_new_tokens
    if room < 1:   # ids[-0:] would keep the whole prompt
        raise ValueError(f"--max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                         f"{block_size} tokens; pass a smaller one, e.g. --max_new_tokens={block_size // 2}")
    return room


def render_prompts(tokenizer, prompts, max_tokens=None):
    """Token ids of each prompt through the chat template: a user message (a string), or a
    whole conversation (a list of messages that ends with the user's). With `max_tokens` (see
    prompt_room), an over-long prompt keeps only its last `max_tokens` ids: the end holds the
    request and the assistant's turn, and the answer needs room in the context after it."""
    rendered = [tokenizer.render_prompt(p if isinstance(p, list) else [{"role": "user", "content": p}])
                for p in prompts]
    return rendered if max_tokens is None else [ids[-max_tokens:] for ids in rendered]


def decode_answer(tokenizer, ids, stop_tokens):
    """An answer's text, without the stop token that ended it (if one did)."""
    ended = bool(ids) and ids[-1] in stop_tokens
    return tokenizer.decode(ids[:-1] if ended else ids).strip()


@torch.no_grad()
def generate_responses(model, tokenizer, prompts, max_new_tokens=128, batch_size=64, temperature=0.0,
                       generator=None, stop_tokens=None):
    """Answer each prompt through the chat template: a user message (a string), or a whole
    conversation (a list of messages that ends with the user's). Prompts are batched by
    length, so a batch wastes little on padding; the answers come back in the original
    order. Greedy (temperature 0) by default, as IFEval reports. An answer ends at any of
    `stop_tokens`, by default at <|end|> or at <|endoftext|>, where a pretrained model ends its
    text: what it writes after that is another text, not its answer."""
    stop_tokens = stop_tokens or tokenizer.stops
    was_training = model.training
    model.eval()
    rendered = render_prompts(tokenizer, prompts, prompt_room(model.config.block_size, max_new_tokens))
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    responses = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        outputs = generate(model, [rendered[i] for i in batch], max_new_tokens, temperature=temperature,
                           stop_tokens=stop_tokens, pad_token=tokenizer.pad, generator=generator)
        for i, out in zip(batch, outputs):
            responses[i] = decode_answer(tokenizer, out, stop_tokens)
    model.train(was_training)
    return responses


def sample_answers(model, tokenizer, records, k, temperature, max_new_tokens, batch_size, generator,
                   stop_tokens=None):
    """K sampled answers per record: a list of K strings per record. The K copies of a prompt
    sit side by side, and generate_responses batches by prompt length with the KV cache."""
    prompts = [r["prompt"] for r in records for _ in range(k)]
    answers = generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, generator,
                                 stop_tokens)
    return [answers[i * k:(i + 1) * k] for i in range(len(records))]


def pass_rates(passed):
    """passed: for each prompt, one bool per sampled answer (did every instruction pass?).
    Returns (the share of answers that pass, pass@k: the share of prompts with at least one
    passing answer among their k; Chen et al. 2021's estimator with n = k)."""
    answers = [p for row in passed for p in row]
    return sum(answers) / max(len(answers), 1), sum(any(row) for row in passed) / max(len(passed), 1)


def sampled_pass_rates(model, tokenizer, records, k, temperature, max_new_tokens=128, batch_size=64, seed=0,
                       device="cpu", judge=None):
    """Prompt-level strict accuracy of *sampled* answers, beside greedy decoding's: k answers to
    each record at `temperature`. RL (PPO, rejection sampling) can only make likelier what the
    policy already samples, so a sample's pass rate and pass@k show where it starts and how far
    it could go (FINDINGS.md, "PPO", how much could it gain at all). pass@k is best-of-k with a perfect
    judge. With `judge` (records, answers -> one score per answer, e.g. a reward model's), also
    best-of-k with that judge: how often each prompt's highest-scored answer passes (Nakano et
    al. 2021; Gao et al. 2022 set it beside RL). Records with no checkable instruction are
    skipped, as aggregate() skips them."""
    generator = torch.Generator(device=device).manual_seed(seed)
    answers = sample_answers(model, tokenizer, records, k, temperature, max_new_tokens, batch_size, generator)
    judged = judge(records, answers) if judge is not None else None
    passed, best_passed = [], []
    for i, (r, group) in enumerate(zip(records, answers)):
        marks = [[m for m in score(a, r["instruction_id_list"], r["kwargs"], r["prompt"])["strict"] if m is not None]
                 for a in group]
        if marks[0]:
            passed.append([all(m) for m in marks])
            if judged is not None:   # did the judge's favourite pass?
                best_passed.append([passed[-1][max(range(k), key=judged[i].__getitem__)]])
    sample_rate, pass_at_k = pass_rates(passed)
    rates = {"samples": k, "sample_temperature": temperature, "sample_prompt_strict": sample_rate,
             "pass_at_k": pass_at_k}
    return rates | ({"best_of_k_prompt_strict": pass_rates(best_passed)[0]} if judged is not None else {})


def earlier_exchanges(records, seed=0):
    """For a second-turn evaluation: for each record, ANOTHER record's prompt and its
    demonstration, slips included (the last two of its "messages"), to ask the record's own
    prompt after, as the second message of a chat (sample.py --chat). Deterministic from
    `seed`."""
    if len(records) < 2 or any("messages" not in r for r in records):
        raise ValueError('a second-turn evaluation needs two records or more, each with "messages" '
                         "(the splits of data/make_sft.py have them)")
    rng, out = Random(seed), []
    for i in range(len(records)):
        j = rng.randrange(len(records) - 1)
        out.append(records[j + (j >= i)]["messages"][-2:])  # any record but this one
    return out


def evaluate_records(model, tokenizer, records, max_new_tokens=128, batch_size=64, earlier=None):
    """records: IFEval inputs {"prompt", "instruction_id_list", "kwargs"} -> (metrics, responses).
    metrics has prompt/instruction x strict/loose accuracies, a per-type table and the
    count of unsupported instruction ids (see minift/synthetic/scoring.py), and "prompts_cut": how many
    prompts were longer than the model can read before its answer ("prompt_token_limit"
    tokens) and lost their start. With `earlier` (one list of messages per record, e.g. from
    earlier_exchanges) each prompt is asked after them."""
    prompts = [r["prompt"] for r in records]
    if earlier is not None:
        prompts = [turns + [{"role": "user", "content": p}] for turns, p in zip(earlier, prompts, strict=True)]
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size)
    scored = [score(resp, r["instruction_id_list"], r["kwargs"], r["prompt"]) | {"instruction_id_list": r["instruction_id_list"]}
              for resp, r in zip(responses, records)]
    limit = model.config.block_size - max_new_tokens
    cut = sum(len(ids) > limit for ids in render_prompts(tokenizer, prompts))
    return aggregate(scored) | {"prompts_cut": cut, "prompt_token_limit": limit}, responses
