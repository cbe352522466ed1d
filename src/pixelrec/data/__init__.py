"""Datasets and their identity; nothing here knows a model.

`raw` (PixelRec and RecBole files as distributed), `prepare` (the deterministic prepared dataset),
`prepared` (reading it, memory-mapped), `images` (the LMDB image store), `text_tokens` (item texts
tokenised once), `views` and `batch` (training examples and evaluation batches as integer arrays),
`synth` (synthetic data in the raw layout), `stats` and `tokens`.
"""
