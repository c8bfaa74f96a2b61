"""Run under ``torchrun --nproc_per_node 2`` by ``tests/test_distributed.py``: one training step at world size
2, rank r on batch r of epoch 0's plan (a hybrid tower: with the pseudo contexts the loop draws for it), then
rank 0 writes the parameters (safetensors) to ARGV[3].

Usage: torchrun --nproc_per_node 2 tests/ddp_step.py DATA CONFIG_JSON OUT_FILE"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from twotower import config as cfgmod
from twotower.data import SequenceData
from twotower.train.batches import WindowBatches, plan_epoch
from twotower.train.config import RunConfig
from twotower.train.distributed import shutdown
from twotower.train.trainer import Trainer


def main() -> None:
    data_dir, config, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    data = SequenceData.load(data_dir)
    cfg = cfgmod.load(RunConfig, config)
    trainer = Trainer(data, cfg, out.parent / "run", overwrite=True)
    batches = plan_epoch(trainer.lengths, cfg.train.batch_tokens, cfg.train.seed, 0)
    rank = trainer.dist.rank
    # a hybrid's snapshots and contexts are drawn from (epoch, global batch index), as in Trainer.fit
    inputs, rows, pseudo = WindowBatches(trainer.feat, trainer.windows, [batches[rank]], trainer.pseudo, 0, rank)[0]
    stats = trainer.step(inputs, rows, pseudo)
    if trainer.main:
        state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(out), metadata={"targets": str(stats["targets"])})
    shutdown()


if __name__ == "__main__":
    main()
