"""Generation with Hugging Face `generate`, streamed: text pieces come out as the tokens are
made (transformers' `TextIteratorStreamer`, `generate` in a thread), stop strings cut the text
and end the generation, and the prompt is checked against the model's context first.

Not a plugin (no entry point): a helper of `inference_command` and `serve_command`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from axolotl_weave import WeaveError

from axolotl_weave_plugins.inference._model import LoadedModel


class PromptTooLong(WeaveError):
    """The prompt fills the model's context: nothing is left for an answer."""


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. `temperature` 0 is greedy; `top_k` 0 means no top-k cut."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def check(self) -> Sampling:
        """Refuse values `generate` cannot take, naming the flag."""
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if problems:
            raise WeaveError("; ".join(problems))
        return self

    def with_overrides(self, **values: Any) -> Sampling:
        """A copy with the values that are not None replaced (a request's own settings)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None}).check()


@dataclass
class Generation:
    """One streamed answer. Iterate it for the text pieces; afterwards `text`, `prompt_tokens`,
    `completion_tokens` and `finish_reason` ("stop": an end token or a stop string; "length":
    `max_new_tokens` reached) are set. `close()` (or leaving the loop early) stops `generate`."""

    loaded: LoadedModel
    prompt_ids: list[int]
    sampling: Sampling
    extra: dict[str, Any] = field(default_factory=dict)  # more model inputs (an image's pixels)
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        """How many tokens the prompt has."""
        return len(self.prompt_ids)

    def __iter__(self) -> Iterator[str]:
        return self.pieces()

    def close(self) -> None:
        """Stop generating (a client went away)."""
        self.cancel.set()

    def pieces(self) -> Iterator[str]:
        """Text pieces as they are generated; stop strings are held back until they cannot
        start a stop string, and the text is cut before one."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        loaded, sampling = self.loaded, self.sampling
        max_new = room_for_answer(loaded, len(self.prompt_ids), sampling.max_new_tokens)
        cancel = self.cancel

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        streamer = TextIteratorStreamer(
            loaded.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        inputs = torch.tensor([self.prompt_ids], device=loaded.device)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with torch.inference_mode():
                    result["ids"] = loaded.model.generate(
                        input_ids=inputs,
                        attention_mask=torch.ones_like(inputs),
                        **{k: v.to(loaded.device) for k, v in self.extra.items()},
                        generation_config=generation_config(loaded, sampling, max_new),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                        streamer=streamer,
                    )
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="weave-generate", daemon=True)
        worker.start()
        hold = max((len(s) for s in sampling.stop), default=1) - 1
        sent = 0
        stopped = drained = False
        try:
            for piece in streamer:
                self.text += piece
                cut = first_stop(self.text, sampling.stop)
                if cut is not None:
                    self.text = self.text[:cut]
                    stopped = True
                    cancel.set()
                    if cut > sent:
                        yield self.text[sent:cut]
                    sent = cut
                    break
                safe = len(self.text) - hold
                if safe > sent:
                    yield self.text[sent:safe]
                    sent = safe
            else:
                drained = True
            if not stopped and len(self.text) > sent:
                yield self.text[sent:]
        finally:
            cancel.set()
            if not drained:  # left early: let generate finish (it stops at the next token)
                for _ in streamer:
                    pass
            worker.join()
        if "error" in result:
            raise result["error"]
        new = result["ids"][0, len(self.prompt_ids) :].tolist()
        self.completion_tokens = len(new)
        ended = bool(new) and new[-1] in loaded.eos_token_ids
        self.finish_reason = "stop" if stopped or ended or len(new) < max_new else "length"


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in `text`, or None."""
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def room_for_answer(loaded: LoadedModel, prompt_tokens: int, wanted: int) -> int:
    """`wanted` new tokens, fewer when the context ends first; a prompt that fills the context
    is refused (`PromptTooLong`)."""
    limit = loaded.context_length
    if limit is None:
        return wanted
    if prompt_tokens >= limit:
        raise PromptTooLong(
            f"the prompt is {prompt_tokens} tokens (as rendered with "
            f"{loaded.prompter.describe}), but the model's context is {limit} tokens: nothing "
            "is left for an answer; shorten the prompt"
        )
    return min(wanted, limit - prompt_tokens)


def generation_config(loaded: LoadedModel, sampling: Sampling, max_new_tokens: int) -> Any:
    """transformers' `GenerationConfig` for `sampling`: greedy at temperature 0, else sampling
    with temperature, top-p and top-k."""
    from transformers import GenerationConfig

    sample = sampling.temperature > 0
    extra: dict[str, Any] = {}
    if sample:
        extra = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        extra["top_k"] = sampling.top_k or None
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        repetition_penalty=sampling.repetition_penalty,
        eos_token_id=loaded.eos_token_ids or None,
        pad_token_id=loaded.tokenizer.pad_token_id,
        bos_token_id=loaded.tokenizer.bos_token_id,
        **extra,
    )


def generate(
    loaded: LoadedModel,
    prompt_ids: list[int],
    sampling: Sampling,
    extra: dict[str, Any] | None = None,
) -> Generation:
    """A `Generation` of an answer to `prompt_ids` (with `extra` model inputs: an image's
    pixels); iterate it to run it. The prompt is checked against the context at once."""
    room_for_answer(loaded, len(prompt_ids), sampling.max_new_tokens)
    return Generation(loaded, list(prompt_ids), sampling, dict(extra or {}))
