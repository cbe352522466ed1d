"""One adapter for Hugging Face `transformers` text encoders: load from local files, freeze by layer,
pool, and cut at the first trainable layer for the frozen-prefix cache.

Any encoder model whose layers are one list of `config.num_hidden_layers` blocks works (BERT,
RoBERTa, MiniLM, DistilBERT, ELECTRA, MPNet, ModernBERT, ...). Nothing is downloaded: a model comes
from a directory, or from the local Hugging Face cache by hub name, and no remote code is run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from pixelrec.errors import UserError
from pixelrec.towers.freezing import frozen_modules

TEXT_POOLINGS = ("mean", "cls")


def load_text_model(source: str, key: str) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local directory or the local hub cache; `key` names the setting in errors."""
    try:
        import transformers
    except ImportError:
        raise UserError("text items need Hugging Face transformers: pip install 'pixelrec[text]'") from None
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face transformers model directory (no config.json); "
                        f"give {key}=DIR, a directory saved with save_pretrained")
    if path.exists():
        refuse_code_and_pickles(path)
    where = str(path) if path.exists() else source
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report is ours to word
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        try:
            config = transformers.AutoConfig.from_pretrained(where, local_files_only=True, trust_remote_code=False)
        except OSError as err:
            if path.exists():  # a config.json that cannot be read as one
                raise UserError(f"{path / 'config.json'}: not a transformers configuration "
                                f"({_first_line(err)})") from None
            raise UserError(f"{key}={source}: neither a model directory nor a model in the local Hugging Face cache "
                            "(nothing is downloaded); give a directory saved with save_pretrained") from None
        except (ValueError, KeyError) as err:
            raise UserError(f"{where}: not a transformers model ({_first_line(err)})") from None
        try:
            model, info = transformers.AutoModel.from_pretrained(
                where, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                output_loading_info=True, ignore_mismatched_sizes=True)
        except (OSError, ValueError) as err:
            raise UserError(f"{where}: cannot load the model's weights ({_first_line(err)})") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"{where}: no usable tokenizer beside the model ({_first_line(err)})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise UserError(f"{where}: the weights do not fit {type(model).__name__}: {len(missing)} missing, "
                        f"e.g. {missing[0]}")
    mismatched = [m for m in info.get("mismatched_keys", []) if not str(m[0]).startswith("pooler.")]
    if mismatched:
        name, stored, wanted = (tuple(mismatched[0]) + (None, None))[:3]
        raise UserError(f"{where}: the weights do not fit the config.json beside them: {len(mismatched)} of another "
                        f"shape, e.g. {name} ({_shape(stored)} stored, {_shape(wanted)} in the config)")
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise UserError(f"{where}: no tokenizer files beside the model (its vocabulary would be only the special "
                        "tokens); save the tokenizer with save_pretrained into the same directory")
    return model, tokenizer


#: Weight files that are Python pickles: loading one can run code, so they are never read.
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def refuse_code_and_pickles(folder: Path) -> None:
    """A model folder is data: refuse one that asks for its own code to run (`auto_map` in config.json
    or tokenizer_config.json) or whose weights exist only as pickles (no .safetensors file)."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            settings = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # missing or unreadable: transformers' own reading says what is wrong
        if isinstance(settings, dict) and settings.get("auto_map"):
            raise UserError(f"{folder / name}: the model folder asks to run its own Python code (auto_map); "
                            "pixelrec never runs code from a model folder: use a model that transformers knows")
    if not any(folder.glob("*.safetensors")):
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
        if pickled:
            raise UserError(f"{folder / pickled[0]}: weights stored as a Python pickle, which pixelrec does not load; "
                            "save the model with save_pretrained(safe_serialization=True) to get model.safetensors")


def _shape(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (tuple, list, torch.Size)) else str(value)


def text_tower(source: str, key: str) -> tuple["TextTower", Any]:
    """(tower, tokenizer) of the model at `source` (a directory or a hub name in the local cache),
    checked to belong together; `key` names the setting in errors."""
    model, tokenizer = load_text_model(source, key)
    tower = TextTower(model, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                      Path(source).name or source)
    tower.check_vocabulary(tokenizer, source)
    return tower, tokenizer


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}"


class TextTower(nn.Module):
    """A transformers encoder as a tower: token ids (-1 = padding) -> hidden states [B, L, H].

    Its parameters fall in three phases, found by running the model once: what runs before the first
    layer (embeddings, an embedding projection, a relative-position table), the layers, and what runs
    after the last layer (a final norm). Parameters that never run (an unused pooler) stay frozen."""

    def __init__(self, model: nn.Module, pad_id: int, name: str) -> None:
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # pooling is ours (mean or the first token): no need to run BERT's pooler
        self.model, self.pad_id, self.name = model, pad_id, name
        self.width = int(model.config.hidden_size)
        self.layers_path = _layer_list(model, name)
        self.before, self.after = _phases(self)
        self.cut = 0

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_path)

    def layer_names(self) -> list[str]:
        """Parameter-name prefix of each layer, bottom to top (as `named_parameters` of the tower spells them)."""
        return [f"model.{self.layers_path}.{i}." for i in range(len(self.layers))]

    def freeze(self, tune_last: int | str, key: str = "items.text.tune_last") -> None:
        """Train the top `tune_last` layers and what runs after them (a final norm), freeze what runs
        before them; 0 freezes the whole model, 'all' trains all of it, embeddings included."""
        n_layers = len(self.layers)
        if tune_last == "all":
            for pname, p in self.model.named_parameters():
                used = pname in self.before or pname in self.after or pname.startswith(f"{self.layers_path}.")
                p.requires_grad_(used)
            self.cut = 0
            return
        n = int(tune_last)
        if n > n_layers:
            raise UserError(f"{key}={n}: {self.name} has {n_layers} layers (tune_last: all trains its embeddings too)")
        self.cut = n_layers - n
        trainable = tuple(f"{self.layers_path}.{i}." for i in range(self.cut, n_layers))
        for pname, p in self.model.named_parameters():
            p.requires_grad_(pname.startswith(trainable) or (pname in self.after and n > 0))

    def frozen_parts(self) -> list[nn.Module]:
        """The largest submodules whose parameters are all frozen: kept in eval mode (no dropout)."""
        return frozen_modules(self.model)

    def check_vocabulary(self, tokenizer: Any, source: str) -> None:
        rows = self.model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise UserError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table "
                            f"{rows} rows: tokenizer and model do not belong together")

    def check_length(self, max_tokens: int, key: str) -> None:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and max_tokens > positions:
            raise UserError(f"{key}={max_tokens}: {self.name} takes at most {positions} tokens")

    def _inputs(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = ids >= 0
        return torch.where(mask, ids, torch.full_like(ids, self.pad_id)), mask.long()

    def forward(self, ids: Tensor) -> Tensor:
        input_ids, mask = self._inputs(ids)
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    # --- frozen-prefix cache: the model runs its own forward (masks, positions), over a slice of its layers
    @contextlib.contextmanager
    def _only_layers(self, chosen: slice) -> Iterator[None]:
        owner_path, _, attr = self.layers_path.rpartition(".")
        owner = self.model.get_submodule(owner_path)
        every = getattr(owner, attr)
        setattr(owner, attr, nn.ModuleList(list(every)[chosen]))
        try:
            yield
        finally:
            setattr(owner, attr, every)

    def prefix(self, ids: Tensor) -> Tensor:
        """Hidden states after the frozen layers (what runs before the layers, and those below `cut`):
        [B, L, H]; the model's output when all of it is frozen."""
        if self.cut == 0:
            raise RuntimeError("no frozen layer to cache")
        if self.cut == len(self.layers):
            return self(ids)
        captured: list[Tensor] = []
        last = self.layers[self.cut - 1]
        handle = last.register_forward_hook(
            lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out))
        try:
            with self._only_layers(slice(0, self.cut)):
                self(ids)
        finally:
            handle.remove()
        return captured[0]

    def suffix(self, states: Tensor, ids: Tensor) -> Tensor:
        """The model's output from cached prefix `states`, which replace the first trainable layer's input
        (the model still makes its masks and positions; the frozen layers do not run)."""
        if self.cut == len(self.layers):
            return states

        def replace(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (states.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": states.to(kwargs["hidden_states"].dtype)}

        handle = self.layers[self.cut].register_forward_pre_hook(replace, with_kwargs=True)
        try:
            with self._only_layers(slice(self.cut, None)):
                return self(ids)
        finally:
            handle.remove()

    def prefix_sha256(self) -> str:
        """Hash of the frozen parameters and every buffer: the weights a cache depends on (and a little more)."""
        digest = hashlib.sha256()
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        buffers = {n for n, _ in self.model.named_buffers()}
        state = self.model.state_dict()
        for key in sorted(k for k in state if k in frozen or k in buffers):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def pool_tokens(hidden: Tensor, ids: Tensor, pooling: str) -> Tensor:
    """[B, H]: the mean of the real tokens' states, or the first token's (CLS)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = (ids >= 0).to(hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _layer_list(model: nn.Module, name: str) -> str:
    """Dotted path of the one ModuleList of `num_hidden_layers` blocks."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [path for path, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and path]
    outermost = [p for p in found if not any(p.startswith(f"{q}.") for q in found)]
    if len(outermost) != 1:
        raise UserError(f"{name} ({type(model).__name__}): no single list of its {n} layers; text items take "
                        "encoder models such as BERT, RoBERTa, MiniLM or DistilBERT")
    return outermost[0]


@torch.no_grad()
def _phases(tower: TextTower) -> tuple[frozenset[str], frozenset[str]]:
    """(parameters that run before the first layer, parameters that run after the last), from one
    forward pass over two tokens with a hook on every module that owns parameters."""
    layers = tower.layers
    phase = ["before"]
    first_use: dict[str, str] = {}
    handles = [layers[0].register_forward_pre_hook(lambda m, a: phase.__setitem__(0, "layers")),
               layers[-1].register_forward_hook(lambda m, a, out: phase.__setitem__(0, "after"))]

    def note(owned: list[str]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            for name in owned:
                first_use.setdefault(name, phase[0])
        return hook

    for module_name, module in tower.model.named_modules():
        owned = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)]
        if owned:
            handles.append(module.register_forward_pre_hook(note(owned)))
    was_training = tower.model.training
    try:
        tower.model.eval()
        device = next(tower.model.parameters()).device
        tower(torch.full((1, 2), tower.pad_id, dtype=torch.long, device=device))
    finally:
        tower.model.train(was_training)
        for handle in handles:
            handle.remove()
    in_layers = f"{tower.layers_path}."
    before = frozenset(n for n, when in first_use.items() if when == "before" and not n.startswith(in_layers))
    after = frozenset(n for n, when in first_use.items() if when == "after" and not n.startswith(in_layers))
    return before, after
