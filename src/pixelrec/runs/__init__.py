"""A run directory as one concept: claimed by one writer, started, resumed, checkpointed, loaded.

`directory` (the claim, what may change on resume, checkpoints, the dataset's identity, the saved
configuration), `loading` (a run's model with one checkpoint's weights, on its dataset wherever it
moved) and `results` (the one writer and reader of results.json).
"""
