"""
Instruction-following evaluation: generate answers to IFEval-style records with batched
greedy decoding through the KV cache, then score them with the checkers in code
(minift/scoring.py). Used by evaluate.py, by train_sft.py during training, and by the
pipeline's report card.
"""

import torch

from minift.scoring import aggregate, score


@torch.no_grad()
def generate_responses(model, tokenizer, prompts, max_new_tokens=128, batch_size=64, temperature=0.0,
                       generator=None):
    """Answer each prompt (a user message string) through the chat template.
    Prompts are batched by length, so a batch wastes little on padding; the answers come
    back in the original order. Greedy (temperature 0) by default, as IFEval reports."""
    was_training = model.training
    model.eval()
    rendered = [tokenizer.render_prompt([{"role": "user", "content": p}]) for p in prompts]
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


def evaluate_records(model, tokenizer, records, max_new_tokens=128, batch_size=64):
    """records: IFEval inputs {"prompt", "instruction_id_list", "kwargs"} -> (metrics, responses).
    metrics has prompt/instruction x strict/loose accuracies, a per-type table and the
    count of unsupported instruction ids (see minift/scoring.py)."""
    responses = generate_responses(model, tokenizer, [r["prompt"] for r in records], max_new_tokens, batch_size)
    scored = [score(resp, r["instruction_id_list"], r["kwargs"], r["prompt"]) | {"instruction_id_list": r["instruction_id_list"]}
              for resp, r in zip(responses, records)]
    return aggregate(scored), responses
