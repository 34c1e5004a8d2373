"""`optimizer: muon`: Muon (`torch.optim.Muon`) on the hidden layers' weight matrices and AdamW on
everything else, split as Axolotl splits them.

Muon orthogonalizes each 2-D update (Newton-Schulz), so it suits the matrices of the hidden
layers only. As in Axolotl (and Moonlight): the input embeddings and the output head (also the
`embed_tokens` / `lm_head` / PEFT `modules_to_save` weights by name) go to AdamW without weight
decay, and so do parameters that are not 2-D (biases, norms; Axolotl would give 3-D tensors to
Muon as stacks of matrices, which torch's Muon refuses). Muon: momentum 0.95, Nesterov, 5
Newton-Schulz steps; its matrices keep the decay of their group. AdamW: `adam_epsilon`, and
betas `(adam_beta1, adam_beta2)` when the config sets both, else Axolotl's Muon default
`(0.9, 0.95)`. Every group keeps its `lr` (Axolotl's example uses `learning_rate: 0.02`).

`optim_args:` `momentum` (Axolotl's `mu` too), `nesterov`, `ns_steps`, `adjust_lr_fn`
(`original`, the default: Keller Jordan's `sqrt(max(1, rows/cols))` scale of the step;
`match_rms_adamw`: Moonshot's `0.2 * sqrt(max(rows, cols))`).

Not identical to Axolotl's Muon (Dion's implementation in axolotl-contribs-mit): that one runs a
schedule of five Newton-Schulz coefficient sets and scales the step by `sqrt(rows/cols)`; torch's
uses Keller Jordan's fixed coefficients and the scale above. Weight decay, momentum and the split
are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import model_validator

from axolotl_weave_plugins.optimizers._optim_args import boolean, keys_set, optimizer_args

PLUGIN_KIND = "optimizer"

OPTIM_ARGS = {
    "momentum": float, "mu": float, "nesterov": boolean, "ns_steps": int, "adjust_lr_fn": str,
}  # fmt: skip
"""The `optim_args` Muon reads."""

EMBEDDING_NAMES = ("embed_tokens", "lm_head")
"""Parameter names Axolotl's Muon gives to AdamW (with `modules_to_save.default.weight`)."""


class MuonSettings(PluginConfig):
    """No keys of its own: checks `optim_args` when `optimizer: muon`."""

    @model_validator(mode="after")
    def _muon_optim_args(self) -> MuonSettings:
        if getattr(self, "optimizer", None) == "muon":
            muon_options(self)
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The check of Muon's `optim_args`."""
    return MuonSettings


def muon_options(cfg: Any) -> dict[str, Any]:
    """torch.optim.Muon's settings from `optim_args` (ValueError for a bad one)."""
    given = optimizer_args("muon", cfg, OPTIM_ARGS)
    if "momentum" in given and "mu" in given:
        raise ValueError("optim_args: give momentum or mu (the same setting), not both")
    adjust = given.get("adjust_lr_fn", "original")
    if adjust not in ("original", "match_rms_adamw"):
        raise ValueError(
            f"optim_args: adjust_lr_fn {adjust!r} for optimizer muon: give original or "
            "match_rms_adamw"
        )
    return {
        "momentum": given.get("momentum", given.get("mu", 0.95)),
        "nesterov": given.get("nesterov", True),
        "ns_steps": given.get("ns_steps", 5),
        "adjust_lr_fn": adjust,
    }


def adamw_betas(cfg: Any) -> tuple[float, float]:
    """`(adam_beta1, adam_beta2)` when the config sets both, else Axolotl's Muon default."""
    if not {"adam_beta1", "adam_beta2"} <= keys_set(cfg):
        return (0.9, 0.95)
    return (cfg.adam_beta1, cfg.adam_beta2)


def split_for_muon(
    groups: list[dict[str, Any]], is_embedding: Callable[[Any], bool]
) -> list[dict[str, Any]]:
    """Each group split into its Muon part (2-D, not an embedding: `muon` true) and its AdamW
    parts (`muon` false; embeddings without weight decay); empty parts dropped."""
    split = []
    for group in groups:
        matrices, others, embeddings = [], [], []
        for param in group["params"]:
            if is_embedding(param):
                embeddings.append(param)
            elif param.ndim == 2:
                matrices.append(param)
            else:
                others.append(param)
        for params, muon, decay in (
            (matrices, True, group["weight_decay"]),
            (others, False, group["weight_decay"]),
            (embeddings, False, 0.0),
        ):
            if params:
                split.append({**group, "params": params, "muon": muon, "weight_decay": decay})
    return split


@hookimpl(trylast=True)
def adjust_param_groups(cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
    """With `optimizer: muon`, mark each group's parameters for Muon or AdamW (after the other
    plugins split the groups: `trylast`), telling the embeddings and head apart by module."""
    if cfg.optimizer != "muon":
        return
    embeddings = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if getattr(module, "weight", None) is not None:
            embeddings.add(id(module.weight))
    for name, param in model.named_parameters():
        if any(part in name for part in EMBEDDING_NAMES) or name.endswith(
            "modules_to_save.default.weight"
        ):
            embeddings.add(id(param))
    groups[:] = split_for_muon(groups, lambda param: id(param) in embeddings)


def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
    """Muon and AdamW as one optimizer over the marked groups (groups nobody marked are split
    by shape alone)."""
    from axolotl_weave_plugins.optimizers._muon_adamw import MuonWithAdamW

    try:
        muon = muon_options(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    marked = [group for group in param_groups if "muon" in group]
    unmarked = [group for group in param_groups if "muon" not in group]
    groups = marked + split_for_muon(unmarked, lambda param: False)
    adamw = {"betas": adamw_betas(cfg), "eps": cfg.adam_epsilon}
    return MuonWithAdamW(groups, lr=cfg.learning_rate, muon=muon, adamw=adamw)


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register `muon`."""
    register("muon", build)
