"""`type: summarizetldr` (and `summarizetldr:<style>`): an article and its TL;DR summary.

Mirrors Axolotl's `summarizetldr` dataset handler (`SummarizeTLDRPromptTokenizingStrategy` with
`SummarizeTLDRPrompter`: no system text, `USER: Summarize the following article as a TL;DR.`).
Row fields: `article`, `summary`. The prompt is masked unless `train_on_inputs`; the summary
(appended right after `ASSISTANT:`, as in Axolotl) and EOS are trained.

Axolotl quirk kept: `SummarizeTLDRPrompter` sets its turns whatever the style, so
`summarizetldr:instruct`, `:chat`, `:chatml` and `:phi` all render as `summarizetldr`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import PROMPT_STYLES, build_prompt_response_rows

PLUGIN_KIND = "format"

PROMPT = "USER: Summarize the following article as a TL;DR.\n{article}\nASSISTANT:"
FORMATS = {
    "summarizetldr": "article, summary (TL;DR summarization)",
    **{
        f"summarizetldr:{name}": f"summarizetldr rows (Axolotl ignores the '{name}' style)"
        for name in PROMPT_STYLES
    },
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `summarizetldr` and `summarizetldr:<style>` (the same) for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose article is `text` and whose summary is empty:
    the prompt inference renders."""
    return {"article": text, "summary": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize article/summary rows, masking the prompt unless `train_on_inputs`."""

    def render(row: dict[str, Any]) -> tuple[str, str]:
        return PROMPT.format(article=text_field(row, "article")), text_field(row, "summary")

    required = ["article", "summary"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
