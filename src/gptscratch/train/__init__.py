"""Training: the config and its presets, the loop, optimizers, checkpoints, run directories, ranks and FSDP.

`config` (TrainConfig, presets) → `command` (the `train` command: which run a command line means) →
`loop` (`setup` → `Run` → `loop`), which uses `optim`, `checkpoint`, `rundir`, `distributed` and `fsdp`.
Nothing is imported here, so that reading a checkpoint (`gptscratch.train.checkpoint`) loads no loop.
"""
