"""
Instruction-following evaluation: generate answers to IFEval-style records with batched
greedy decoding through the KV cache, then score them with the checkers in code
(minift/scoring.py). Used by evaluate.py, by train_sft.py during training, and by the
pipeline's report card.
"""

from random import Random

import torch

from minift.scoring import aggregate, score


@torch.no_grad()
def generate_responses(model, tokenizer, prompts, max_new_tokens=128, batch_size=64, temperature=0.0,
                       generator=None):
    """Answer each prompt through the chat template: a user message (a string), or a whole
    conversation (a list of messages that ends with the user's). Prompts are batched by
    length, so a batch wastes little on padding; the answers come back in the original
    order. Greedy (temperature 0) by default, as IFEval reports."""
    was_training = model.training
    model.eval()
    rendered = [tokenizer.render_prompt(p if isinstance(p, list) else [{"role": "user", "content": p}])
                for p in prompts]
    limit = model.config.block_size - max_new_tokens
    rendered = [ids[-limit:] for ids in rendered]  # keep the end of over-long prompts
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    responses = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        outputs = model.generate([rendered[i] for i in batch], max_new_tokens, temperature=temperature,
                                 stop_token=tokenizer.end, pad_token=tokenizer.pad, generator=generator)
        for i, out in zip(batch, outputs):
            ended = bool(out) and out[-1] == tokenizer.end
            responses[i] = tokenizer.decode(out[:-1] if ended else out).strip()
    model.train(was_training)
    return responses


def earlier_exchanges(records, seed=0):
    """For a second-turn evaluation: for each record, ANOTHER record's prompt and reference
    answer (the last two of its "messages"), to ask the record's own prompt after, as the
    second message of a chat (sample.py --chat). Deterministic from `seed`."""
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
    count of unsupported instruction ids (see minift/scoring.py). With `earlier` (one list of
    messages per record, e.g. from earlier_exchanges) each prompt is asked after them."""
    prompts = [r["prompt"] for r in records]
    if earlier is not None:
        prompts = [turns + [{"role": "user", "content": p}] for turns, p in zip(earlier, prompts, strict=True)]
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size)
    scored = [score(resp, r["instruction_id_list"], r["kwargs"], r["prompt"]) | {"instruction_id_list": r["instruction_id_list"]}
              for resp, r in zip(responses, records)]
    return aggregate(scored), responses
