"""gptscratch's benchmarks, outside the package: each measures gptscratch against a reference on the same work.

Run from a checkout as `python -m benchmarks train|generate|prepare|gpu ...` (or `gptscratch bench ...`,
which forwards here). `harness` holds what they share; `vs_transformers` the training step and generation
against transformers, `vs_tiktoken` data preparation against raw tiktoken, `gpu` the prepared GPU run,
`gpu_ab` the A/B of training-step variants on one GPU. Figures and their commands: RESULTS.md.
"""
