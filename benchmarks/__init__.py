"""gptscratch's benchmarks, outside the package: each measures gptscratch against a reference on the same work.

Run from a clone, in its root, as `python -m benchmarks NAME ...` (`python -m benchmarks --help` lists them;
benchmarks/README.md says what each measures). `harness` holds what they share, `val_scorer` the one val
scorer of the quality comparisons. Figures and their commands: RESULTS.md; their history: LOG.md.
"""
