"""NeuMF initialised from trained GMF and MLP checkpoints (He et al., 2017, section 3.4.1).

The NCF recipe: train GMF and MLP separately, copy their embeddings and MLP layers into NeuMF,
and make NeuMF's output layer the concatenation of the two output layers weighted by alpha and
1 - alpha (the bias likewise); then fine-tune with plain SGD (conf/model/neumf_pretrained.yaml),
since Adam's moment estimates are not part of the checkpoints. This is the one net builder that
reads files, so it lives apart from `nets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flixrec.errors import ConfigError
from flixrec.models.nets import GMF, MLP, NeuMF


def _load(path: str | None, key: str, kind: type) -> tuple[dict[str, torch.Tensor], dict]:
    """(net state dict without the `net.` prefix, stored run config) of a checkpoint of `kind`."""
    if not path:
        raise ConfigError(
            f"model.net.{key} is not set: neumf_pretrained starts from a trained {kind.__name__} "
            f"checkpoint. Train it first (python train.py model={kind.__name__.lower()} ...) and "
            f"pass model.net.{key}=RUN/checkpoints/best.ckpt, or run both steps with "
            f"python train.py experiment=neumf_pretrain")
    if not Path(path).is_file():
        raise ConfigError(f"model.net.{key}={path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = ckpt.get("flixrec_config") or {}
    target = str(config.get("model", {}).get("net", {}).get("_target_", ""))
    if target.rsplit(".", 1)[-1] != kind.__name__:
        raise ConfigError(f"model.net.{key}={path} is a checkpoint of {target or 'an unknown net'}, "
                          f"not of {kind.__name__}")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return state, config


def _check_same_data(key: str, path: str, config: dict, expected: dict[str, Any]) -> None:
    """Pre-training on another split would leak this run's held-out items into training."""
    stored = {"data.name": config.get("data", {}).get("name"),
              "data.split": config.get("data", {}).get("split"), "seed": config.get("seed")}
    for name, want in expected.items():
        if want is not None and stored[name] != want:
            raise ConfigError(
                f"model.net.{key}={path} was trained with {name}={stored[name]!r}, but this run has "
                f"{name}={want!r}; pre-train on the same data, split and seed (another split would "
                f"put this run's test items into pre-training)")


def neumf_from_checkpoints(num_users: int, num_items: int, gmf_ckpt: str | None = None,
                           mlp_ckpt: str | None = None, alpha: float = 0.5, dropout: float = 0.0,
                           gmf_dim: int | None = None, mlp_layers: list[int] | None = None,
                           data_name: str | None = None, split: str | None = None,
                           seed: int | None = None) -> NeuMF:
    """A NeuMF whose towers are copies of trained GMF and MLP nets.

    Args:
        num_users, num_items: this run's data sizes; the checkpoints must have the same.
        gmf_ckpt, mlp_ckpt: checkpoints written by `train.py model=gmf` / `model=mlp`.
        alpha: weight of the GMF output layer; the MLP's gets 1 - alpha.
        dropout: dropout of the MLP tower while fine-tuning.
        gmf_dim, mlp_layers: expected tower sizes (None: take them from the checkpoints).
        data_name, split, seed: this run's data, split and seed; the checkpoints must match.
    Raises ConfigError naming the checkpoint and the mismatch when anything does not fit.
    The returned net carries `rebuild_config`, the plain NeuMF config that rebuilds it.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"model.net.alpha={alpha}: must be between 0 and 1")
    expected = {"data.name": data_name, "data.split": split, "seed": seed}
    towers = {}
    for key, path, kind in (("gmf_ckpt", gmf_ckpt, GMF), ("mlp_ckpt", mlp_ckpt, MLP)):
        state, config = _load(path, key, kind)
        _check_same_data(key, path, config, expected)
        towers[key] = (state, config["model"]["net"])
    gmf_state, gmf_cfg = towers["gmf_ckpt"]
    mlp_state, mlp_cfg = towers["mlp_ckpt"]
    found = {
        "num_users": (gmf_state["user_emb.weight"].shape[0], mlp_state["user_emb.weight"].shape[0]),
        "num_items": (gmf_state["item_emb.weight"].shape[0], mlp_state["item_emb.weight"].shape[0]),
    }
    for name, want in (("num_users", num_users), ("num_items", num_items)):
        if found[name] != (want, want):
            raise ConfigError(f"{name}: this run's data has {want}, but the GMF and MLP checkpoints "
                              f"({gmf_ckpt}, {mlp_ckpt}) have {found[name][0]} and {found[name][1]}; "
                              f"pre-train on the same data")
    ck_dim, ck_layers = int(gmf_cfg["dim"]), [int(x) for x in mlp_cfg["layers"]]
    if gmf_dim is not None and int(gmf_dim) != ck_dim:
        raise ConfigError(f"model.net.gmf_dim={gmf_dim}, but {gmf_ckpt} has GMF dim {ck_dim}")
    if mlp_layers is not None and [int(x) for x in mlp_layers] != ck_layers:
        raise ConfigError(f"model.net.mlp_layers={list(mlp_layers)}, but {mlp_ckpt} has MLP layers {ck_layers}")

    net = NeuMF(num_users, num_items, ck_dim, ck_layers, dropout)
    net.gmf.load_state_dict({k: v for k, v in gmf_state.items() if not k.startswith("output.")})
    # the MLP's Sequential indices shift with dropout; copy the dense layers in order
    src_layers = [(k, v) for k, v in mlp_state.items() if k.startswith("tower.")]
    dst_layers = [k for k in net.mlp.state_dict() if k.startswith("tower.")]
    if len(src_layers) != len(dst_layers):
        raise ConfigError(f"{mlp_ckpt}: {len(src_layers)} MLP tensors, NeuMF expects {len(dst_layers)}")
    mlp_target = {"user_emb.weight": mlp_state["user_emb.weight"],
                  "item_emb.weight": mlp_state["item_emb.weight"],
                  **{dst: v for dst, (_, v) in zip(dst_layers, src_layers)}}
    net.mlp.load_state_dict(mlp_target)
    with torch.no_grad():
        net.output.weight.copy_(torch.cat([alpha * gmf_state["output.weight"],
                                           (1 - alpha) * mlp_state["output.weight"]], dim=1))
        net.output.bias.copy_(alpha * gmf_state["output.bias"] + (1 - alpha) * mlp_state["output.bias"])
    net.rebuild_config = {"_target_": "flixrec.models.nets.NeuMF", "gmf_dim": ck_dim,
                          "mlp_layers": ck_layers, "dropout": dropout}
    return net
