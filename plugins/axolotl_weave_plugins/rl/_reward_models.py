"""Reward models as GRPO reward functions: a `trl.reward_funcs` entry that names a model (a
local folder, such as the output of a `reward_model: true` run, or a hub id `owner/name`)
instead of a `module.function` path, as TRL's `GRPOTrainer` (and Axolotl, which passes such an
entry on to it) takes one.

The model is loaded as TRL loads it, `AutoModelForSequenceClassification` with one label, with
its own tokenizer (its EOS as the pad token when it has none, and that pad id set on the model,
which scores the last token before the padding), in the run's precision, and placed by the
run's strategy as a frozen model, on first use. Each completion is scored as TRL scores it: a
conversational prompt and its completion rendered as one conversation by the reward model's
chat template, a string prompt and completion joined, tokenized without special tokens,
right-padded; the reward is the first logit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_weave import WeaveError, chat_text, resolve_precision

from axolotl_weave_plugins.rl._grpo_formats import is_conversation


def names_a_model(path: str) -> bool:
    """Whether a `trl.reward_funcs` entry names a reward model rather than a `module.function`
    path: a local folder, or a hub id (`owner/name`: a slash, which no module path has)."""
    return Path(path).expanduser().is_dir() or "/" in path


def check_model_entry(path: str) -> None:
    """Refuse a local folder that holds no model (ValueError naming the entry)."""
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ValueError(
            f"trl.reward_funcs: '{path}' is a folder without config.json, so not a saved reward "
            "model (a sequence classifier, e.g. the output_dir of a reward_model: true run); "
            "a reward function is a module.function path"
        )


class RewardModelScorer:
    """A sequence classifier called as a reward function, loaded and placed on first use."""

    def __init__(self, path: str, cfg: Any) -> None:
        self.path = path
        self.cfg = cfg
        self.__name__ = Path(path.rstrip("/")).name  # TRL logs the model id's last part
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: Any = None

    def place(self, strategy: Any) -> None:
        """Load the model and its tokenizer (once), frozen, where the strategy puts frozen
        models."""
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dtype = resolve_precision(self.cfg).weight_dtype
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=1, dtype=getattr(torch, dtype)
            )
            tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            raise WeaveError(
                f"trl.reward_funcs: cannot load the reward model '{self.path}' (a folder or hub "
                f"id of a sequence classifier): {exc}"
            ) from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        model.requires_grad_(False).eval()
        self.model = strategy.prepare_frozen(model)
        self.tokenizer = tokenizer
        self.device = strategy.device

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        """Each prompt and completion as the text the reward model reads."""
        if prompts and is_conversation(prompts[0]):
            try:
                return [
                    chat_text(self.tokenizer, p + c)
                    for p, c in zip(prompts, completions, strict=True)
                ]
            except ValueError as exc:  # its template refused the conversation
                raise WeaveError(f"trl.reward_funcs: reward model {self.path}: {exc}") from None
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        """The model's score of each completion (its first logit)."""
        import torch

        if self.model is None:
            raise RuntimeError(f"the reward model {self.path} was called before it was placed")
        inputs = self.tokenizer(
            self.texts(prompts, completions),
            return_tensors="pt",
            padding=True,
            padding_side="right",
            add_special_tokens=False,
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return logits[:, 0].float().tolist()
