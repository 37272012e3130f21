"""Run a training script as `python SCRIPT ARGS` would, then save this rank's final parameters
to DIR/rank<RANK>.pt. Only rank 0 writes a checkpoint, so this is how a test sees that DDP
kept every rank's copy of the model identical:

    python -m torch.distributed.run --nproc_per_node=2 tests/rank_weights.py DIR train_ppo.py --preset=micro

Every optimizer the script builds is recorded (torch.optim.Optimizer.__init__ is wrapped),
and their parameters, in order, are what gets saved.
"""
import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
optimizers = []
build_optimizer = torch.optim.Optimizer.__init__


def recording_init(self, *args, **kwargs):
    build_optimizer(self, *args, **kwargs)
    optimizers.append(self)


if __name__ == "__main__":
    out_dir, script = sys.argv[1], sys.argv[2]
    torch.optim.Optimizer.__init__ = recording_init
    sys.path.insert(0, ROOT)
    sys.argv = sys.argv[2:]
    runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    params = [p.detach().cpu() for opt in optimizers for group in opt.param_groups for p in group["params"]]
    torch.save(params, os.path.join(out_dir, f"rank{os.environ.get('RANK', '0')}.pt"))
