"""Optimizers and parameter groups: lr_groups, unfrozen_parameters, plugin optimizers."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._optim import build_optimizer
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, train
from axolotl_weave_plugins.methods.unfrozen_parameters import apply_unfrozen_parameters
from axolotl_weave_testing import optimizer_settings as opt_cfg
from axolotl_weave_testing import run_weave, without_package, write_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


@pytest.fixture
def tiny_model(tiny_llama_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def test_lr_groups_give_named_modules_their_own_rate(
    tiny_model: torch.nn.Module, weave_hooks: Any
) -> None:
    group = SimpleNamespace(name="embeddings", modules=["embed_tokens", "lm_head"], lr=5e-5)
    optimizer = build_optimizer(opt_cfg(lr_groups=[group]), tiny_model, weave_hooks)
    lrs = {(g["group"], g["weight_decay"]): g["lr"] for g in optimizer.param_groups}
    assert lrs == {("embeddings", 0.1): 5e-5, ("default", 0.1): 1e-3, ("default", 0.0): 1e-3}
    embed = tiny_model.get_input_embeddings().weight
    owner = next(g for g in optimizer.param_groups if any(p is embed for p in g["params"]))
    assert owner["lr"] == 5e-5
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(tiny_model.parameters()))


def test_an_lr_group_matching_nothing_is_refused(
    tiny_model: torch.nn.Module, weave_hooks: Any
) -> None:
    group = SimpleNamespace(name="vision", modules=["vision_tower"], lr=1e-5)
    with pytest.raises(ConfigError, match="lr_groups: vision match"):
        build_optimizer(opt_cfg(lr_groups=[group]), tiny_model, weave_hooks)


def test_unfrozen_parameters_train_only_what_matches(
    base_config: dict, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    config = {**base_config, "unfrozen_parameters": [r"layers\.1\.mlp\.", r"^lm_head"]}
    train(open_session(write_config(tmp_path / "c.yml", config)))
    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    after = load_file(str(Path(base_config["output_dir"]) / "model.safetensors"))
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert changed and all(
        ("layers.1.mlp." in name) or name.startswith("lm_head") for name in changed
    ), changed
    assert "lm_head.weight" in changed


def test_unfrozen_parameters_that_match_nothing(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="match no parameter"):
        apply_unfrozen_parameters(tiny_model, [r"^nothing\."])
    with pytest.raises(ConfigError, match="is not a regex"):
        apply_unfrozen_parameters(tiny_model, ["layers.("])


def test_a_plugin_registers_an_optimizer(base_config: dict, tmp_path: Path) -> None:
    built = []

    class PlainSGD:
        @hookimpl
        def register_optimizers(self, register: Any) -> None:
            def build(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
                built.append(len(groups))
                return torch.optim.SGD(groups, lr=cfg.learning_rate)

            register("plain_sgd", build)

    pm = make_plugin_manager()
    pm.register(PlainSGD())
    config = {**base_config, "optimizer": "plain_sgd", "max_steps": 2}
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    assert state.global_step == 2 and built == [2]


def test_unknown_optimizer_suggests_the_registered_ones(base_config: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(
            write_config(tmp_path / "c.yml", {**base_config, "optimizer": "adamw_bnb_8bt"})
        )
    assert "did you mean adamw_bnb_8bit?" in str(info.value)
    assert "paged_adamw_8bit" in str(info.value)


def test_a_bitsandbytes_optimizer_without_the_package(base_config: dict, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, "optimizer": "paged_adamw_8bit"})
    result = run_weave("train", str(path), env=without_package("bitsandbytes", tmp_path))
    assert result.returncode == 4, result.stderr
    err = " ".join(result.stderr.split())
    assert "optimizer: paged_adamw_8bit needs the package 'bitsandbytes'" in err
    assert "pip install 'bitsandbytes>=0.50'" in err
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="needs bitsandbytes (scripts/setup.sh installs it)",
)
@pytest.mark.parametrize(
    ("name", "state_dtype"),
    [("adamw_bnb_8bit", torch.uint8), ("paged_adamw_8bit", torch.uint8), ("lion_32bit", None)],
)
def test_a_bitsandbytes_optimizer_trains(
    base_config: dict, tmp_path: Path, name: str, state_dtype: torch.dtype | None
) -> None:
    """bitsandbytes' optimizers by name, for real (its CPU backend here, which runs the paged
    ones unpaged): the loss falls, and the 8-bit ones keep their moments in 8 bits."""
    seen: dict[str, Any] = {}

    class Inspect:
        @hookimpl
        def on_step_end(self, optimizer: Any) -> None:
            seen.setdefault("optimizer", optimizer)

    config = {
        **base_config, "optimizer": name, "learning_rate": 3e-3, "max_steps": 8,
        "lr_scheduler": "constant", "logging_steps": 1,
    }  # fmt: skip
    pm = make_plugin_manager()
    pm.register(Inspect())
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert len(losses) == 8 and sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses
    optimizer = seen["optimizer"]
    assert type(optimizer).__module__.startswith("bitsandbytes.optim"), type(optimizer)
    # bitsandbytes keeps tensors under 4,096 values (the norms) in 32 bits
    large = [s["state1"] for p, s in optimizer.state.items() if p.numel() >= 4096]
    assert large
    if state_dtype is not None:
        assert {m.dtype for m in large} == {state_dtype}


# --- the optimizer registry: every name Axolotl and the Trainer give ------------------------------


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


BNB = pytest.mark.skipif(not installed("bitsandbytes"), reason="needs bitsandbytes")
TORCHAO = pytest.mark.skipif(
    not installed("torchao"), reason="needs torchao: pip install 'axolotl-weave[torchao]'"
)

OPTIMIZER_CLASSES = {
    "adamw_torch": ("torch.optim", "AdamW"),
    "adamw": ("torch.optim", "AdamW"),
    "adamw_torch_fused": ("torch.optim", "AdamW"),
    "adam": ("torch.optim", "Adam"),
    "sgd": ("torch.optim", "SGD"),
    "adagrad": ("torch.optim", "Adagrad"),
    "rmsprop": ("torch.optim", "RMSprop"),
    "adafactor": ("transformers.optimization", "Adafactor"),
    "muon": ("axolotl_weave_plugins.optimizers", "MuonWithAdamW"),
    "adamw_torch_8bit": ("torchao.optim", "AdamW8bit"),
    "adamw_torch_4bit": ("torchao.optim", "AdamW4bit"),
    "ao_adamw_fp8": ("torchao.optim", "AdamWFp8"),
    "adamw_bnb_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
    "paged_adamw_32bit": ("bitsandbytes.optim", "PagedAdamW32bit"),
    "paged_adamw": ("bitsandbytes.optim", "PagedAdamW"),
    "lion_8bit": ("bitsandbytes.optim", "Lion8bit"),
    "lion_32bit": ("bitsandbytes.optim", "Lion32bit"),
    "paged_lion_8bit": ("bitsandbytes.optim", "PagedLion8bit"),
    "paged_lion_32bit": ("bitsandbytes.optim", "PagedLion32bit"),
    "ademamix": ("bitsandbytes.optim", "AdEMAMix"),
    "ademamix_8bit": ("bitsandbytes.optim", "AdEMAMix8bit"),
    "paged_ademamix_32bit": ("bitsandbytes.optim", "PagedAdEMAMix"),
    "paged_ademamix_8bit": ("bitsandbytes.optim", "PagedAdEMAMix8bit"),
    "rmsprop_bnb": ("bitsandbytes.optim", "RMSprop32bit"),
    "rmsprop_bnb_8bit": ("bitsandbytes.optim", "RMSprop8bit"),
    "rmsprop_bnb_32bit": ("bitsandbytes.optim", "RMSprop32bit"),
    "came_pytorch": ("came_pytorch", "CAME"),
    "optimi_adamw": ("optimi", "AdamW"),
    "stable_adamw": ("optimi", "StableAdamW"),
    "grokadamw": ("grokadamw", "GrokAdamW"),
}
"""Every built-in optimizer name -> (module its class comes from, class name)."""

PYPI = {
    module: pytest.mark.skipif(not installed(module), reason=f"needs {module} (setup.sh has it)")
    for module in ("came_pytorch", "optimi", "grokadamw")
}


def with_packages(names: list[str]) -> list[Any]:
    """`names` as parameters, skipped where the optimizer's package is missing."""
    marks = {"bitsandbytes.optim": [BNB], "torchao.optim": [TORCHAO]}
    marks |= {module: [mark] for module, mark in PYPI.items()}
    return [pytest.param(n, marks=marks.get(OPTIMIZER_CLASSES[n][0], []), id=n) for n in names]


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A forward, a backward and an optimizer step on a few tokens."""
    ids = torch.arange(1, 17).reshape(2, 8)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_every_builtin_optimizer_is_registered(weave_hooks: Any) -> None:
    assert set(OPTIMIZER_CLASSES) <= set(weave_hooks.optimizers())


@pytest.mark.parametrize("name", with_packages(list(OPTIMIZER_CLASSES)))
def test_each_optimizer_builds_its_class_and_steps(
    name: str, tiny_model: torch.nn.Module, weave_hooks: Any
) -> None:
    module, class_name = OPTIMIZER_CLASSES[name]
    optimizer = build_optimizer(opt_cfg(optimizer=name), tiny_model, weave_hooks)
    assert type(optimizer).__module__.startswith(module), type(optimizer)
    assert type(optimizer).__name__ == class_name
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    one_step(tiny_model, optimizer)
    changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed, changed
    assert "model.embed_tokens.weight" in changed
    if name == "adamw_torch_fused":
        assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize(
    ("name", "optim_args"),
    [
        ("adamw_torch", None), ("adamw_torch_fused", None), ("adafactor", None),
        ("sgd", None), ("sgd", "momentum=0.9,nesterov=true"),
        ("sgd", "momentum=0.5,dampening=0.1,weight_decay=0.2"),
        ("adagrad", "lr_decay=0.01,eps=1e-9"), ("rmsprop", "alpha=0.9,centered=true"),
        *[
            pytest.param(name, args, marks=BNB)
            for name, args in [
                ("adamw_bnb_8bit", None), ("adamw_8bit", None), ("paged_adamw_8bit", None),
                ("paged_adamw_32bit", None), ("lion_8bit", None), ("lion_32bit", None),
                ("paged_lion_8bit", None), ("paged_lion_32bit", None),
                ("ademamix", "beta3=0.999,alpha=8,t_alpha=100"), ("ademamix_8bit", None),
                ("paged_ademamix_32bit", None), ("paged_ademamix_8bit", None),
                ("rmsprop_bnb", None), ("rmsprop_bnb_8bit", None), ("rmsprop_bnb_32bit", None),
            ]
        ],
        pytest.param("adamw_torch_8bit", None, marks=TORCHAO),
        pytest.param("adamw_torch_4bit", "block_size=128", marks=TORCHAO),
        pytest.param("stable_adamw", None, marks=PYPI["optimi"]),
        pytest.param("stable_adamw", "max_lr=0.01,kahan_sum=true", marks=PYPI["optimi"]),
        pytest.param("grokadamw", None, marks=PYPI["grokadamw"]),
        pytest.param("grokadamw", "alpha_init=0.9,lamb=3,gradient_clipping=0.5",
                     marks=PYPI["grokadamw"]),
    ],
)  # fmt: skip
def test_an_optimizer_is_built_as_the_trainer_builds_it(
    name: str, optim_args: str | None, weave_hooks: Any, tmp_path: Path
) -> None:
    """Same class (or bitsandbytes' class of the same bits and paging) and the same settings
    as Hugging Face's Trainer gives the name, where Axolotl hands it to the Trainer."""
    from transformers import Trainer, TrainingArguments

    keys = dict(learning_rate=3e-4, adam_beta1=0.8, adam_beta2=0.99, adam_epsilon=1e-6)
    args = TrainingArguments(
        output_dir=str(tmp_path), optim=name, optim_args=optim_args, report_to=[], **keys
    )
    trainer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    layer = torch.nn.Linear(64, 80)

    def groups() -> list[dict[str, Any]]:
        return [
            {"params": [layer.weight], "weight_decay": 0.1},
            {"params": [layer.bias], "weight_decay": 0.0},
        ]

    theirs = trainer_class(groups(), **kwargs)
    cfg = SimpleNamespace(optimizer=name, optim_args=optim_args, **keys)
    ours = weave_hooks.optimizers()[name](groups(), cfg)
    assert algorithm(ours) == algorithm(theirs)
    assert ours.defaults == theirs.defaults
    assert bnb_args(ours) == bnb_args(theirs)
    assert getattr(ours, "is_paged", None) == getattr(theirs, "is_paged", None)


def algorithm(optimizer: Any) -> Any:
    """The update an optimizer runs: bitsandbytes' name of it (its classes of one algorithm
    differ by their bits and paging), else the class."""
    return getattr(optimizer, "optimizer_name", type(optimizer))


def bnb_args(optimizer: Any) -> dict[str, Any] | None:
    """bitsandbytes' settings of an optimizer (its bits, block-wise...), None for others."""
    args = getattr(optimizer, "args", None)
    return vars(args) if args is not None else None


# --- muon -----------------------------------------------------------------------------------------


def muon_split(optimizer: Any, model: torch.nn.Module) -> dict[str, set[str]]:
    """Parameter names by the algorithm that updates them."""
    names = {id(p): n for n, p in model.named_parameters()}
    split: dict[str, set[str]] = {"muon": set(), "adamw": set()}
    for group in optimizer.param_groups:
        split["muon" if group["muon"] else "adamw"] |= {names[id(p)] for p in group["params"]}
    return split


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(
    tiny_model: torch.nn.Module, tiny_llama_dir: Path, weave_hooks: Any
) -> None:
    """Muon updates the 2-D weights of the hidden layers; AdamW the embeddings and the head
    (without weight decay, as Axolotl's Muon) and the norms; one step equals torch's Muon and
    AdamW run side by side, and the state round-trips through `state_dict`."""
    cfg = opt_cfg(optimizer="muon", learning_rate=0.02, weight_decay=0.01)
    optimizer = build_optimizer(cfg, tiny_model, weave_hooks)
    split = muon_split(optimizer, tiny_model)
    params = dict(tiny_model.named_parameters())
    hidden = {n for n, p in params.items() if p.ndim == 2 and "layers." in n}
    assert split["muon"] == hidden and len(hidden) == 14  # 2 layers x (q k v o gate up down)
    assert split["adamw"] == set(params) - hidden
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= split["adamw"]
    decay = {
        n: g["weight_decay"] for g in optimizer.param_groups for n in muon_split_names(g, params)
    }
    assert decay["model.embed_tokens.weight"] == decay["lm_head.weight"] == 0.0
    assert decay["model.layers.0.mlp.down_proj.weight"] == 0.01
    assert optimizer.muon.defaults["momentum"] == 0.95 and optimizer.muon.defaults["nesterov"]
    adamw = next(group for group in optimizer.param_groups if not group["muon"])
    assert adamw["betas"] == (0.9, 0.999) and adamw["eps"] == 1e-8 and adamw["lr"] == 0.02

    # the reference: torch's Muon on the hidden matrices, AdamW on the rest, side by side
    reference_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ref = dict(reference_model.named_parameters())
    muon_groups, adamw_groups = [], []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k not in ("params", "muon")}
        settings["params"] = [ref[n] for n in muon_split_names(group, params)]
        (muon_groups if group["muon"] else adamw_groups).append(settings)
    reference = [torch.optim.Muon(muon_groups), torch.optim.AdamW(adamw_groups)]
    for _ in range(2):
        one_step(tiny_model, optimizer)
        ids = torch.arange(1, 17).reshape(2, 8)
        reference_model(input_ids=ids, labels=ids).loss.backward()
        for inner in reference:
            inner.step()
            inner.zero_grad()
    for name, param in params.items():
        assert torch.equal(param, ref[name]), name

    # a checkpoint's state restores both algorithms
    resumed_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    resumed_model.load_state_dict(tiny_model.state_dict())
    resumed = build_optimizer(cfg, resumed_model, weave_hooks)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file
    one_step(tiny_model, optimizer)
    one_step(resumed_model, resumed)
    for name, param in resumed_model.named_parameters():
        assert torch.equal(param, params[name]), name


def muon_split_names(group: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The names of a group's parameters."""
    names = {id(p): n for n, p in params.items()}
    return [names[id(p)] for p in group["params"]]


def test_muon_adamw_betas_are_axolotls_unless_the_config_sets_both(
    base_config: dict, tmp_path: Path
) -> None:
    from axolotl_weave_plugins.optimizers.muon import adamw_betas

    path = write_config(tmp_path / "a.yml", {**base_config, "optimizer": "muon"})
    assert adamw_betas(open_session(path).cfg) == (0.9, 0.95)
    config = {**base_config, "optimizer": "muon", "adam_beta1": 0.8, "adam_beta2": 0.9}
    assert adamw_betas(open_session(write_config(tmp_path / "b.yml", config)).cfg) == (0.8, 0.9)


def test_muon_trains(base_config: dict, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Inspect:
        @hookimpl
        def on_step_end(self, optimizer: Any) -> None:
            seen.setdefault("optimizer", optimizer)

    config = {
        **base_config, "optimizer": "muon", "learning_rate": 0.02, "max_steps": 6,
        "lr_scheduler": "constant", "logging_steps": 1, "optim_args": {"mu": 0.9},
    }  # fmt: skip
    pm = make_plugin_manager()
    pm.register(Inspect())
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
    optimizer = getattr(seen["optimizer"], "optimizer", seen["optimizer"])  # accelerate's wrapper
    assert type(optimizer).__name__ == "MuonWithAdamW"
    assert optimizer.muon.defaults["momentum"] == 0.9


# --- refused at validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"optimizer": "galore_adamw"},
            "optimizer: 'galore_adamw' is an optimizer of Axolotl / Hugging Face's Trainer that "
            "Axolotl Weave does not support: GaLore",
        ),
        ({"optimizer": "lion_pytorch"}, "use lion_32bit or lion_8bit"),
        ({"optimizer": "ao_adamw_8bit"}, "use adamw_torch_8bit"),
        ({"optimizer": "schedule_free_adamw"}, "train/eval mode switches"),
        (
            {"optimizer": "adamw_torch", "optim_args": {"momentum": 0.9}},
            "optim_args: optimizer adamw_torch does not read momentum (it takes no optim_args)",
        ),
        (
            {"optimizer": "sgd", "optim_args": "momentum=0.9,nesterow=true"},
            "optim_args: optimizer sgd does not read nesterow (it takes dampening, momentum, "
            "nesterov, weight_decay)",
        ),
        ({"optimizer": "sgd", "optim_args": "momentum"}, "'momentum' is not key=value"),
        ({"optimizer": "rmsprop", "optim_args": {"alpha": "high"}}, "alpha='high'"),
        ({"optimizer": "muon", "optim_args": {"adjust_lr_fn": "x"}}, "give original or"),
        ({"optimizer": "muon", "optim_args": {"mu": 0.9, "momentum": 0.9}}, "not both"),
        pytest.param(
            {"optimizer": "lion_8bit", "optim_args": {"alpha": 5}},
            "optim_args: optimizer lion_8bit does not read alpha",
            marks=BNB,
        ),
    ],
)
def test_an_optimizer_or_its_settings_refused_at_validation(
    base_config: dict, tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, **config})
    with pytest.raises(ConfigError) as info:
        open_session(path)
    text = " ".join(str(info.value).split())
    assert message in text
    if "is an optimizer of" in message:  # the valid names are listed
        assert "adamw_torch" in text and "muon" in text and "sgd" in text


def test_optim_args_reach_the_optimizer(
    base_config: dict, tmp_path: Path, weave_hooks: Any
) -> None:
    config = {**base_config, "optimizer": "sgd", "optim_args": "momentum=0.9, nesterov=true"}
    cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    optimizer = weave_hooks.optimizers()["sgd"]([{"params": [torch.zeros(2)]}], cfg)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"] is True


def test_a_torchao_optimizer_without_torchao_is_refused_at_validation(
    base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    path = write_config(tmp_path / "c.yml", {**base_config, "optimizer": "adamw_torch_4bit"})
    with pytest.raises(ConfigError) as info:
        open_session(path)
    text = " ".join(str(info.value).split())
    assert (
        "optimizer: adamw_torch_4bit needs the package 'torchao', which is not installed: "
        "pip install 'axolotl-weave[torchao]'" in text
    )


@TORCHAO
def test_a_torchao_optimizer_keeps_8bit_moments(
    tiny_model: torch.nn.Module, weave_hooks: Any
) -> None:
    optimizer = build_optimizer(opt_cfg(optimizer="adamw_torch_8bit"), tiny_model, weave_hooks)
    one_step(tiny_model, optimizer)
    # torchao quantizes tensors of at least 4,096 values, a multiple of its block (256)
    state = optimizer.state[tiny_model.model.layers[0].self_attn.q_proj.weight]
    assert type(state["exp_avg"]).__name__ == "OptimState8bit"
    assert type(optimizer.state[tiny_model.model.norm.weight]["exp_avg"]) is torch.Tensor


# --- CAME and torch-optimi, as Axolotl builds them -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys", "expected"),
    [
        pytest.param(
            "came_pytorch", {},
            {"betas": (0.9, 0.999, 0.9999), "eps": (1e-30, 1e-16)}, marks=PYPI["came_pytorch"],
        ),
        pytest.param(
            "came_pytorch", {"adam_beta2": 0.99, "adam_beta3": 0.999, "adam_epsilon2": 1e-12},
            {"betas": (0.9, 0.99, 0.999), "eps": (1e-30, 1e-12)}, marks=PYPI["came_pytorch"],
        ),
        pytest.param(
            "optimi_adamw", {"adam_beta1": 0.8},  # one beta set: optimi's own betas
            {"beta1": 0.9, "beta2": 0.99, "eps": 1e-6, "foreach": False}, marks=PYPI["optimi"],
        ),
        pytest.param(
            "optimi_adamw", {"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-7},
            {"beta1": 0.8, "beta2": 0.95, "eps": 1e-7, "foreach": False}, marks=PYPI["optimi"],
        ),
    ],
)  # fmt: skip
def test_axolotls_own_optimizer_names_get_its_settings(
    name: str,
    keys: dict[str, Any],
    expected: dict[str, Any],
    base_config: dict,
    tmp_path: Path,
    weave_hooks: Any,
) -> None:
    """Axolotl passes only the Adam keys a config sets (CAME: each unset one takes its default;
    optimi: betas when both are set), so the library's defaults fill the rest."""
    config = {**base_config, "optimizer": name, "weight_decay": 0.05, **keys}
    cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    optimizer = weave_hooks.optimizers()[name]([{"params": [torch.zeros(4, 4)]}], cfg)
    assert {key: optimizer.defaults[key] for key in expected} == expected
    assert optimizer.defaults["lr"] == base_config["learning_rate"]
    assert optimizer.defaults["weight_decay"] == 0.05


@PYPI["came_pytorch"]
def test_came_trains_and_its_keys_warn_with_another_optimizer(
    base_config: dict, tmp_path: Path, weave_log: Any
) -> None:
    config = {**base_config, "optimizer": "came_pytorch", "learning_rate": 1e-2, "max_steps": 3}
    state = train(open_session(write_config(tmp_path / "came.yml", config)))
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # no NaN
    other = {**base_config, "optimizer": "adamw_torch", "adam_beta3": 0.99}
    open_session(write_config(tmp_path / "other.yml", other))
    assert "config key 'adam_beta3' applies to optimizer: came_pytorch only" in weave_log.text


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [("came_pytorch", "came_pytorch", "came"), ("stable_adamw", "optimi", "optimi"),
     ("grokadamw", "grokadamw", "grokadamw")],
)  # fmt: skip
def test_an_optimizer_whose_package_is_missing_names_its_extra(
    name: str,
    module: str,
    extra: str,
    base_config: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a)
    )
    path = write_config(tmp_path / "c.yml", {**base_config, "optimizer": name})
    with pytest.raises(ConfigError) as info:
        open_session(path)
    text = " ".join(str(info.value).split())
    assert f"needs the package '{module}', which is not installed" in text
    assert f"pip install 'axolotl-weave[{extra}]'" in text
