"""`type: summarizetldr`: an article and its TL;DR summary.

Mirrors Axolotl's `summarizetldr` dataset handler (`SummarizeTLDRPromptTokenizingStrategy` with
`SummarizeTLDRPrompter`: no system text, `USER: Summarize the following article as a TL;DR.`).
Row fields: `article`, `summary`. The prompt is masked unless `train_on_inputs`; the summary
(appended right after `ASSISTANT:`, as in Axolotl) and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats.alpaca import build_prompt_response_rows

PLUGIN_KIND = "format"

PROMPT = "USER: Summarize the following article as a TL;DR.\n{article}\nASSISTANT:"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `summarizetldr`."""
    register(DatasetFormat("summarizetldr", "article, summary (TL;DR summarization)"))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize article/summary rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "summarizetldr":
        return None

    def render(row: dict[str, Any]) -> tuple[str, str]:
        return PROMPT.format(article=text_field(row, "article")), text_field(row, "summary")

    required = ["article", "summary"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
