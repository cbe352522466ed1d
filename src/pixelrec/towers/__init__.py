"""Pretrained networks, independent of any dataset or recommender.

`names` (the paper's nine image encoders by short name, any timm model by its own), `image_tower`
(one timm adapter: create, load local weights in any layout, pool, freeze by layer group),
`weight_layouts` (timm, OpenAI CLIP, open_clip, Hugging Face and torchvision checkpoints converted to
timm's names), `tower_file` (exported towers and their description), `text_tower` (Hugging Face text
encoders from local folders), `prefix_cache` (the frozen lower part of a tower computed once per item)
and `freezing`.
"""
