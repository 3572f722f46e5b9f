"""A torchrun worker (``torchrun ... ddp_fail_worker.py CONFIG.json``) whose rank 1 raises at
its first training step: fault injection as an engine callback, for
``test_train_distributed.test_failing_rank_ends_the_launch``."""

import sys

from torch_isda.train import Callback, TrainConfig, train_distributed


class FailOnRank1(Callback):
    def on_step_start(self, engine, step):
        if engine.rank == 1:
            raise RuntimeError(f"deliberate failure of rank 1 at step {step}")


if __name__ == "__main__":
    train_distributed(TrainConfig.load(sys.argv[1]), quiet=True, callbacks=[FailOnRank1()])
