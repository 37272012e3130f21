"""
Instruction-following evaluation, in the manner of IFEval (Zhou et al. 2023): every
instruction is verified by code, not by a judge model.

    python evaluate.py                                              # after pipeline.py: its SFT model on its test split
    python evaluate.py --ckpt=out/sft/ckpt.pt --split=heldout    # after data/make_sft.py and train_sft.py
    python evaluate.py --ckpt=out/tiny/ppo/ckpt.pt --input=ifeval_input_data.jsonl --output=responses.jsonl
                                                                    # (IFEval's own input file, downloaded)
    T=out/tiny/data/sft/test.jsonl                                  # after pipeline.py: its test split
    python evaluate.py --ckpt=out/tiny/sft/ckpt.pt --input=$T --earlier_turn  # each prompt as a chat's 2nd message
    python evaluate.py --ckpt=out/tiny/sft/ckpt.pt --input=$T --samples=8     # and 8 sampled answers a prompt
    python evaluate.py --ckpt=out/tiny/sft/ckpt.pt --input=$T --samples=8 --reward_ckpt=out/tiny/reward/ckpt.pt

--split reads the split of the pipeline run that holds the checkpoint (out/tiny/data/sft/ for
out/tiny/sft/ckpt.pt), or else data/make_sft.py's (data/generated/sft/). Files go to
--out_dir/<the checkpoint's folder>/ (out/eval/tiny/sft/ for the first line), never beside the
checkpoint, where the pipeline keeps its own responses; --output names the responses file.

It reads IFEval's input JSONL ({"key", "instruction_id_list", "prompt", "kwargs"}), which
is also the format of our generated splits, answers with batched greedy decoding through
the KV cache, and writes IFEval's response JSONL ({"prompt", "response"}), so the same
answers can be scored by Google's own instruction_following_eval tooling (which stops at our
task:* ids: drop them from the input file first). It prints:
  * "scored N of M prompts": a prompt whose ids we cannot check is counted, not scored;
    a warning counts the prompts longer than the model reads before its answer (its context
    less --max_new_tokens), whose start was cut off;
    the language checks need `pip install langdetect` (without it, the printout says so);
  * prompt-level accuracy: the share of prompts whose instructions all pass;
  * instruction-level accuracy: passed instructions over all instructions;
  each strict (the response as is) and loose (IFEval's 8 relaxed variants);
  * a table per instruction type, and a count of instruction ids we cannot check;
  * with --samples=K, also K answers per prompt sampled at --temperature: how often a sample
    passes (prompt-level strict) and pass@K, the share of prompts with a passing sample.
    PPO can only make likelier what the policy samples: these say where it starts and how
    far it could go, and whether it moved the samples or the greedy answer. With
    --reward_ckpt, also best-of-K: the pass rate of the answer the reward model scores
    highest, against pass@K, which is best-of-K with a perfect judge.
Our generated prompts also carry their base task as a `task:*` id (first in the list),
so a prompt with no extra instruction is still scored on doing the task.
"""

import os
from dataclasses import dataclass

from minift.checkpoint import (GENERATIVE, TRAIN_ONE_FIRST, build_model, check_tokenizer, load_checkpoint, tokenizer_for,
                               train_first)
from minift.config import cli_config, run
from minift.evaluation import check_checker_arguments, earlier_exchanges, evaluate_records, sampled_pass_rates
from minift.formats import load_ifeval_inputs, write_ifeval_responses, write_json
from minift.model import ScalarModel
from minift.synthetic.scoring import format_table
from minift.training import pick_device
from train_ppo import Config as PPOConfig
from train_reward import render, score_all

SPLITS = ("test", "heldout")


@dataclass
class Config:
    ckpt: str = "out/tiny/sft/ckpt.pt"
    split: str = "test"                     # test | heldout: of the pipeline run holding --ckpt, else make_sft.py's
    input: str = ""                         # or any IFEval input JSONL (overrides --split)
    output: str = ""                        # responses JSONL (default: in out_dir)
    out_dir: str = "out/eval"               # responses and metrics go to out_dir/<checkpoint folder>/ (results_dir)
    max_examples: int = 0                   # 0 = all
    max_new_tokens: int = 128
    batch_size: int = 64
    device: str = "auto"                    # cuda if there is one, else mps, else cpu
    earlier_turn: bool = False              # ask each prompt after another record's prompt and answer:
                                            # a chat's second turn (writes *_turn2 files)
    samples: int = 0                        # K > 0: also K sampled answers per prompt (pass rate, pass@K)
    temperature: float = PPOConfig.temperature  # for those samples: PPO's rollout temperature
    seed: int = 0                           # for those samples
    reward_ckpt: str = ""                   # with --samples: best-of-K by this reward model too


def reward_model_judge(reward_ckpt, device, batch_size=64, tokenizer_info=None, policy_ckpt="", option=None):
    """A judge for best-of-K: (records, K answers each) -> the reward model's K scores each
    (raw; the normalisation does not change which answer is highest). Every answer is scored
    as a finished turn: unlike PPO's reward, no penalty for an answer cut off unfinished.
    `option`: the command-line option that gave reward_ckpt, named if it is refused."""
    ckpt = load_checkpoint(reward_ckpt, hint=train_first("reward", "train_reward.py"), kinds=("reward",),
                           option=option)
    if tokenizer_info is not None:  # it must read the answers with the policy's id mapping
        check_tokenizer(ckpt, reward_ckpt, tokenizer_info, policy_ckpt)
    tokenizer = tokenizer_for(ckpt, reward_ckpt)
    reward_model = build_model(ckpt, ScalarModel).to(device).eval()
    block_size = reward_model.gpt.config.block_size

    def judge(records, answers):
        seqs = [render(tokenizer, r["prompt"], a)[-block_size:] for r, group in zip(records, answers) for a in group]
        scores, k = score_all(reward_model, seqs, tokenizer, device, batch_size).tolist(), len(answers[0])
        return [scores[i * k:(i + 1) * k] for i in range(len(records))]
    return judge


def evaluate(ckpt_path, input_path, max_examples=0, max_new_tokens=128, batch_size=64, device="auto",
             output=None, earlier_turn=False, samples=0, temperature=PPOConfig.temperature, seed=0, reward_ckpt="",
             from_command_line=False):
    """Evaluate one checkpoint on one IFEval-format file; returns the metrics dict.
    earlier_turn: ask each prompt as the second message of a chat (minift.evaluation.earlier_exchanges).
    samples > 0: add the pass rates of that many answers per prompt sampled at `temperature`,
    and with reward_ckpt best-of-that-many by the reward model. from_command_line: a refused
    checkpoint is named by its option (--ckpt, --reward_ckpt), as evaluate.py's main gives them."""
    if samples and earlier_turn:
        raise SystemExit("error: --samples and --earlier_turn do not combine; run them one at a time")
    ckpt = load_checkpoint(ckpt_path, hint=TRAIN_ONE_FIRST, kinds=GENERATIVE,
                           option="ckpt" if from_command_line else None)
    tokenizer = tokenizer_for(ckpt, ckpt_path)
    device = pick_device(device)
    model = build_model(ckpt).to(device).eval()
    records = load_ifeval_inputs(input_path)
    check_checker_arguments(records, input_path)
    records = records[:max_examples] if max_examples else records
    try:
        earlier = earlier_exchanges(records) if earlier_turn else None
    except ValueError as e:  # records without reference answers: say which file
        raise ValueError(f"{input_path}: {e}") from None
    # the judge first: a wrong --reward_ckpt stops the run before any answer is generated
    judge = (reward_model_judge(reward_ckpt, device, batch_size, ckpt["tokenizer"], ckpt_path,
                                option="reward_ckpt" if from_command_line else None) if reward_ckpt else None)
    metrics, responses = evaluate_records(model, tokenizer, records, max_new_tokens, batch_size, earlier)
    if samples:
        metrics |= sampled_pass_rates(model, tokenizer, records, samples, temperature, max_new_tokens,
                                      batch_size, seed, device, judge)
    if output:
        write_ifeval_responses(output, [{"prompt": r["prompt"], "response": resp}
                                        for r, resp in zip(records, responses)])
    return metrics


def input_file(cfg):
    """The file to evaluate on: --input, or else --split's, which is the pipeline run's own split
    when --ckpt lies in a pipeline run (out/tiny/sft/ckpt.pt and out/tiny/compare/dpo-1337/ckpt.pt
    -> out/tiny/data/sft/), else make_sft.py's."""
    if cfg.input:
        if not os.path.exists(cfg.input):
            raise SystemExit(f"error: --input={cfg.input} does not exist")
        return cfg.input
    if cfg.split not in SPLITS:
        raise SystemExit(f"error: --split={cfg.split} is not a split; choose {' or '.join(SPLITS)}, "
                         f"or pass any IFEval file as --input=FILE")
    folder = os.path.dirname(os.path.abspath(cfg.ckpt))
    while os.path.dirname(folder) != folder:   # up from the checkpoint to the pipeline run that holds it
        folder = os.path.dirname(folder)
        if os.path.exists(os.path.join(folder, "pipeline.json")):
            return os.path.join(folder, "data", "sft", f"{cfg.split}.jsonl")
    generated = f"data/generated/sft/{cfg.split}.jsonl"
    if os.path.exists(generated):
        return generated
    raise SystemExit(f"error: no data for --split={cfg.split}: --ckpt={cfg.ckpt} is in no pipeline run, and "
                     f"{generated} does not exist. Run python pipeline.py or python data/make_sft.py, "
                     f"or pass --input=FILE")


def results_dir(out_dir, ckpt):
    """Where a checkpoint's responses and metrics go: out_dir/ plus the checkpoint's folder as
    seen from here, without its leading out/ (out/tiny_seed2/sft/ckpt.pt -> out/eval/tiny_seed2/sft),
    so that two runs' SFT models do not overwrite each other's files; a checkpoint outside this
    folder is named by its own folder only."""
    folder = os.path.relpath(os.path.dirname(os.path.abspath(ckpt)))
    if folder.startswith(os.pardir):
        folder = os.path.basename(folder)
    elif folder.split(os.sep)[0] == "out" and folder != "out":
        folder = os.path.relpath(folder, "out")
    return os.path.normpath(os.path.join(out_dir, folder))


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    if cfg.reward_ckpt and not cfg.samples:
        raise SystemExit("error: --reward_ckpt picks the best of --samples answers; add --samples=8")
    if os.path.isdir(cfg.ckpt):   # before --split is looked for beside it
        load_checkpoint(cfg.ckpt, kinds=GENERATIVE, option="ckpt")   # raises: a folder, with a file to pass
    input_path = input_file(cfg)
    name = os.path.splitext(os.path.basename(input_path))[0] + ("_turn2" if cfg.earlier_turn else "")
    out_dir = results_dir(cfg.out_dir, cfg.ckpt)
    if os.path.abspath(out_dir) == os.path.abspath(os.path.dirname(cfg.ckpt)):
        raise SystemExit(f"error: --out_dir={cfg.out_dir} puts the files beside the checkpoint ({out_dir}), where "
                         "the pipeline keeps its own responses; choose another --out_dir, such as out/eval")
    output = cfg.output or os.path.join(out_dir, f"responses_{name}.jsonl")
    metrics = evaluate(cfg.ckpt, input_path, cfg.max_examples, cfg.max_new_tokens, cfg.batch_size,
                       cfg.device, output, cfg.earlier_turn, cfg.samples, cfg.temperature, cfg.seed, cfg.reward_ckpt,
                       from_command_line=True)
    print(format_table(metrics))
    if cfg.samples:
        best = (f", best of {cfg.samples} by the reward model {metrics['best_of_k_prompt_strict']:.1%}"
                if cfg.reward_ckpt else "")
        print(f"sampled at temperature {cfg.temperature}, {cfg.samples} answers a prompt (prompt-level strict; "
              f"greedy {metrics['prompt_strict']:.1%}): a sample passes {metrics['sample_prompt_strict']:.1%}"
              f"{best}, pass@{cfg.samples} {metrics['pass_at_k']:.1%}")
    print(f"responses written to {output}")
    write_json(os.path.join(out_dir, f"eval_{name}.json"), metrics)
    return metrics


if __name__ == "__main__":
    run(main)
