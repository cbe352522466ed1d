"""RecBole reference numbers on MovieLens-100k under pixelrec's protocol (the RecBole side).

Runs RecBole's own models through its public API (Config, create_dataset, data_preparation,
get_model, get_trainer) on the same ml-100k.inter file that pixelrec prepares, with RecBole's
leave-one-out split (eval_args: split {LS: valid_and_test}, order TO, group_by user, mode full),
full ranking over every item, Recall@10 and NDCG@10, early stopping on validation NDCG@10, and the
same d, max length, batch size, learning rate and epoch budget as benchmarks/movielens_compare.py.

One change to RecBole's evaluation, so that both tools follow one protocol: RecBole masks the
user's history only for general models (MF/BPR, LightGCN); for sequential models it ranks the
history too. This script masks the history of sequential models as well (the training part for
validation, plus the validation item for test; the target itself is never masked), for model
selection and test. RecBole's own unmasked test numbers of the same best model are reported too
("test_native").

It needs its own virtual environment (RecBole 1.2.1 needs numpy < 2), outside the repository:

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.14.1
    /tmp/recbole-venv/bin/pip install numpy==1.26.4 scipy==1.13.1 pandas==2.2.3 scikit-learn==1.5.2 \
        tqdm pyyaml colorlog==4.7.2 colorama==0.4.4 tensorboard tabulate texttable psutil thop
    /tmp/recbole-venv/bin/pip install --no-deps recbole==1.2.1   # its ray pin is for hyper-tuning only

    /tmp/recbole-venv/bin/python benchmarks/movielens/recbole_reference.py --data-dir /tmp/ml \
        [--models sasrec,mf] [--epochs 300] [--patience 11] [--batch-size 2048] [--out FILE]

Prints JSON {"models": {pixelrec_name: {"recbole_model", "valid", "test", "test_native",
"best_epoch", "epochs_run", "wall_seconds", "train_seconds_to_best", ...}}}. RecBole writes its checkpoints, logs and
TensorBoard events under a temporary working folder (--work), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# pixelrec backbone name -> (RecBole model, its settings). Values are RecBole 1.2.1's own defaults
# (recbole/properties/model/*.yaml), written out so that the comparison does not depend on them.
SEQUENTIAL = {"MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None}
PAIRWISE = {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                                      "dynamic": False, "candidate_num": 0}}
MODELS: dict[str, tuple[str, dict]] = {
    "sasrec": ("SASRec", {**SEQUENTIAL, "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
                          "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
                          "layer_norm_eps": 1e-12, "initializer_range": 0.02}),
    "gru4rec": ("GRU4Rec", {**SEQUENTIAL, "embedding_size": 64, "hidden_size": 128, "num_layers": 1,
                            "dropout_prob": 0.3}),
    "bert4rec": ("BERT4Rec", {**SEQUENTIAL, "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
                              "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu",
                              "layer_norm_eps": 1e-12, "initializer_range": 0.02, "mask_ratio": 0.2,
                              "ft_ratio": 0.5, "transform": "mask_itemseq"}),
    "nextitnet": ("NextItNet", {**SEQUENTIAL, "embedding_size": 64, "kernel_size": 3, "block_num": 5,
                                "dilations": [1, 4], "reg_weight": 1e-5}),
    "srgnn": ("SRGNN", {**SEQUENTIAL, "embedding_size": 64, "step": 1}),
    "lightsans": ("LightSANs", {**SEQUENTIAL, "k_interests": 5, "n_layers": 2, "n_heads": 2, "hidden_size": 64,
                                "inner_size": 256, "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
                                "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02}),
    "mf": ("BPR", {**PAIRWISE, "embedding_size": 64}),
    "lightgcn": ("LightGCN", {**PAIRWISE, "embedding_size": 64, "n_layers": 2, "reg_weight": 1e-5}),
}
ORDER = ["mf", "lightgcn", "sasrec", "gru4rec", "bert4rec", "nextitnet", "srgnn", "lightsans"]


def base_config(data_dir: Path, work: Path, epochs: int, patience: int, batch_size: int, seed: int) -> dict:
    return {
        # data: the atomic file DATA_DIR/ml-100k/ml-100k.inter, every rating an interaction, no filtering
        "data_path": str(data_dir), "dataset": "ml-100k",
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": None, "item_inter_num_interval": None, "val_interval": None,
        "rm_dup_inter": None,
        # protocol
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "valid_metric_bigger": True,
        "eval_batch_size": 4096, "metric_decimal_place": 6,
        # training
        # RecBole stops when more than stopping_step evaluations in a row did not improve
        "epochs": epochs, "stopping_step": patience - 1, "eval_step": 1, "train_batch_size": batch_size,
        "learner": "adam", "learning_rate": 1e-3, "weight_decay": 0.0, "clip_grad_norm": None,
        "seed": seed, "reproducibility": True,
        # machine
        "use_gpu": False, "worker": 0, "show_progress": False, "checkpoint_dir": str(work / "saved"),
        "state": "WARNING",
    }


def history_masks(train_ds, eval_datasets, uid_field: str, iid_field: str, list_field: str, length_field: str):
    """Per evaluation dataset, {user: items of the history before its target} for sequential models:
    every item of the training part (targets and contexts of the training rows, and the validation
    row's context), plus for test the validation target and the test row's context."""
    import torch

    def items_of(ds, with_targets: bool) -> dict[int, set]:
        inter = ds.inter_feat
        users = inter[uid_field].tolist()
        lists = inter[list_field]
        lengths = inter[length_field].tolist()
        targets = inter[iid_field].tolist()
        out: dict[int, set] = {}
        for row, user in enumerate(users):
            seen = out.setdefault(user, set())
            seen.update(lists[row, : lengths[row]].tolist())
            if with_targets:
                seen.add(targets[row])
        return out

    valid_ds, test_ds = eval_datasets
    train_items = items_of(train_ds, with_targets=True)
    valid_context = items_of(valid_ds, with_targets=False)
    valid_all = items_of(valid_ds, with_targets=True)
    test_context = items_of(test_ds, with_targets=False)
    masks = []
    for phase_sets in ([train_items, valid_context], [train_items, valid_all, test_context]):
        merged: dict[int, set] = {}
        for sets in phase_sets:
            for user, items in sets.items():
                merged.setdefault(user, set()).update(items)
        merged = {u: torch.tensor(sorted(i - {0}), dtype=torch.long) for u, i in merged.items()}
        masks.append(merged)
    return masks


def make_trainer_class(base):
    """RecBole's trainer with the user's history masked in full-ranking evaluation of sequential models."""
    import numpy as np
    import torch

    class MaskedHistoryTrainer(base):
        masks: dict = {}  # id(eval dataloader) -> {user: history items}, set by the caller
        active: dict | None = None

        def evaluate(self, eval_data, *args, **kwargs):
            self.active = self.masks.get(id(eval_data))
            try:
                return super().evaluate(eval_data, *args, **kwargs)
            finally:
                self.active = None

        def _full_sort_batch_eval(self, batched_data):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if self.active is not None:
                users = interaction[self.config["USER_ID_FIELD"]].cpu().tolist()
                targets = interaction[self.config["ITEM_ID_FIELD"]].cpu()
                rows, cols = [], []
                empty = torch.zeros(0, dtype=torch.long)
                for row, user in enumerate(users):
                    items = self.active.get(user, empty)
                    items = items[items != targets[row]]  # the target itself is never masked
                    rows.append(torch.full((len(items),), row, dtype=torch.long))
                    cols.append(items)
                if rows:
                    scores[torch.cat(rows), torch.cat(cols)] = -np.inf
            return interaction, scores, positive_u, positive_i

    return MaskedHistoryTrainer


def pick(result: dict) -> dict:
    return {k: float(result[k.lower()]) for k in ("Recall@10", "NDCG@10")}


def run_one(name: str, data_dir: Path, work: Path, args) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import ModelType, get_model, get_trainer, init_seed

    recbole_model, model_settings = MODELS[name]
    config_dict = base_config(data_dir, work, args.epochs, args.patience, args.batch_size, args.seed)
    config_dict.update(model_settings)
    config = Config(model=recbole_model, dataset="ml-100k", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer_cls = get_trainer(config["MODEL_TYPE"], config["model"])
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    if sequential:
        trainer_cls = make_trainer_class(trainer_cls)
    trainer = trainer_cls(config, model)
    if sequential:
        valid_mask, test_mask = history_masks(
            train_data._dataset, (valid_data._dataset, test_data._dataset), config["USER_ID_FIELD"],
            config["ITEM_ID_FIELD"], config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"],
            config["ITEM_LIST_LENGTH_FIELD"])
        trainer.masks = {id(valid_data): valid_mask, id(test_data): test_mask}
    curve: list[float] = []  # validation NDCG@10 after each epoch
    epoch_seconds: list[float] = []  # training time of each epoch (validation excluded), as pixelrec reports it
    train_epoch = trainer._train_epoch

    def timed_epoch(*args, **kwargs):
        started_epoch = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - started_epoch)
        return result

    trainer._train_epoch = timed_epoch
    trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                callback_fn=lambda epoch, score: curve.append(round(float(score), 5)))
    # the best checkpoint, written by RecBole moments ago in this process
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    valid = pick(trainer.evaluate(valid_data, load_best_model=False))
    test = pick(trainer.evaluate(test_data, load_best_model=False))
    out = {"recbole_model": recbole_model, "valid": valid, "test": test}
    if sequential:
        trainer.masks = {}
        out["test_native"] = pick(trainer.evaluate(test_data, load_best_model=False))
        out["valid_native"] = pick(trainer.evaluate(valid_data, load_best_model=False))
    wall = time.perf_counter() - started
    out.update({
        "best_epoch": checkpoint["epoch"] + 1,
        "epochs_run": len(trainer.train_loss_dict),
        "valid_curve": curve,
        "train_seconds_to_best": round(sum(epoch_seconds[: checkpoint["epoch"] + 1]), 1),
        "train_seconds_per_epoch": round(sum(epoch_seconds) / max(len(epoch_seconds), 1), 2),
        "wall_seconds": round(wall, 1),
        "n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1, "n_interactions": dataset.inter_num,
        "settings": model_settings,
    })
    if args.targets is not None:
        write_targets(args.targets / f"{name}.tsv", dataset, valid_data, test_data, config)
    return out


def write_targets(path: Path, dataset, valid_data, test_data, config) -> None:
    """user token, validation target token, test target token: to check that both tools split alike."""
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    rows: dict[str, list[str]] = {}
    for phase, data in (("valid", valid_data), ("test", test_data)):
        inter = data._dataset.inter_feat
        for u, i in zip(inter[uid].tolist(), inter[iid].tolist()):
            rows.setdefault(dataset.id2token(uid, u), ["", ""])[0 if phase == "valid" else 1] = str(
                dataset.id2token(iid, i))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}\t{v}\t{t}\n" for u, (v, t) in sorted(rows.items(), key=lambda r: int(r[0]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding ml-100k/ml-100k.inter")
    parser.add_argument("--models", default=",".join(ORDER), help=f"comma-separated, from {','.join(ORDER)}")
    parser.add_argument("--epochs", type=int, default=300, help="epoch cap (RecBole's default 300)")
    parser.add_argument("--patience", type=int, default=11,
                        help="evaluations without improvement before stopping (stopping_step + 1; default 11 = RecBole's 10)")
    parser.add_argument("--batch-size", type=int, default=2048, help="train_batch_size (RecBole's default 2048)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--work", type=Path, help="working folder for RecBole's checkpoints and logs (default: temporary)")
    parser.add_argument("--targets", type=Path, help="write each model's per-user valid/test targets here (TSV)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    data_dir = args.data_dir.resolve()
    if not (data_dir / "ml-100k" / "ml-100k.inter").is_file():
        sys.exit(f"{data_dir / 'ml-100k' / 'ml-100k.inter'}: missing; run benchmarks/movielens/fetch_ml100k.sh {data_dir}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(ORDER)})")
    if args.targets is not None:
        args.targets = args.targets.resolve()
    out_path = args.out.resolve() if args.out else None
    work_tmp = None if args.work else tempfile.TemporaryDirectory(prefix="recbole-work-")
    work = (args.work or Path(work_tmp.name)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ under the working directory

    import recbole
    import torch

    results: dict = {}
    for name in models:
        print(f"# {name} ({MODELS[name][0]}) ...", file=sys.stderr, flush=True)
        results[name] = run_one(name, data_dir, work, args)
        print(f"# {name}: test {results[name]['test']}  ({results[name]['wall_seconds']}s)", file=sys.stderr, flush=True)
    report = {
        "dataset": "ml-100k", "recbole": recbole.__version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)",
        "budget": {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
                   "learning_rate": 1e-3, "seed": args.seed},
        "models": results,
    }
    text = json.dumps(report, indent=2)
    if out_path:
        out_path.write_text(text + "\n")
    print(text)
    if work_tmp is not None:
        os.chdir("/")
        work_tmp.cleanup()


if __name__ == "__main__":
    main()
