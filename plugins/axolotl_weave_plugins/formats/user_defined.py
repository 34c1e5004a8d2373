"""`type: {...}`: Axolotl's user-defined prompt format, given inline as a mapping.

Mirrors Axolotl's `prompt_strategies/user_defined.py` (`UserDefinedDatasetConfig`,
`InstructionWSystemPromptTokenizingStrategy` with a `SystemDataPrompter`). The mapping's keys,
with Axolotl's defaults:

- `field_instruction` (`instruction`), `field_input` (`input`), `field_output` (`output`),
  `field_system` (`system`): the row fields read. Only the instruction and output fields are
  required; a row without the input field has no input.
- `format` (`"{instruction} {input} "`): the turn when the input is non-empty;
  `no_input_format` (`"{instruction} "`): the turn otherwise.
- `system_format` (`"{system}"`) and `system_prompt` (`""`): the system block, rendered before
  the turn when the system text is non-empty. The system text is the row's `field_system` value
  when the rows have that field (even if a row's value is empty or null, as in Axolotl), else
  `system_prompt`.

The system block and turn are masked unless `train_on_inputs`; the output and EOS are trained.
The same keys may also be written beside `type: user_defined`.

Deviation from Axolotl: a dataset without the output field is an error here (Axolotl reads an
empty response, so each row is its prompt alone and trains nothing); placeholders other than
`{instruction}`, `{input}`, `{system}` are rejected when the config is validated instead of
failing on the first row.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, PluginConfig, hookimpl, text_field
from pydantic import Field, field_validator, model_validator

from axolotl_weave_plugins.formats._prompts import (
    PromptStyle,
    build_prompt,
    build_prompt_response_rows,
)

PLUGIN_KIND = "format"


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class UserDefinedOptions(PluginConfig):
    """The keys of an inline `type:` mapping (Axolotl's `UserDefinedDatasetConfig`)."""

    system_prompt: str = Field("", description="System text when the rows have none.")
    system_format: str = Field("{system}", description="System block; {system} is replaced.")
    field_system: str = Field("system", description="Row field holding the system text.")
    field_instruction: str = Field("instruction", description="Row field of the instruction.")
    field_input: str = Field("input", description="Row field of the optional input.")
    field_output: str = Field("output", description="Row field of the response.")
    format: str = Field(
        "{instruction} {input} ", description="Turn with an input: {instruction}, {input}."
    )
    no_input_format: str = Field(
        "{instruction} ", description="Turn without an input: {instruction}."
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """A key given as null takes its default, as in Axolotl."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("format", "no_input_format", "system_format")
    @classmethod
    def _known_placeholders(cls, value: str, info: Any) -> str:
        allowed = {"system"} if info.field_name == "system_format" else {"instruction", "input"}
        try:
            unknown = _placeholders(value) - allowed
        except ValueError as exc:
            raise ValueError(f"{info.field_name} is not a valid template: {exc}") from None
        if unknown:
            raise ValueError(
                f"{info.field_name} uses {', '.join('{' + n + '}' for n in sorted(unknown))}; "
                f"it may use {', '.join('{' + n + '}' for n in sorted(allowed))}"
            )
        return value


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `user_defined`, the format of an inline `type:` mapping."""
    register(
        DatasetFormat(
            "user_defined",
            "prompt format defined inline in type: (format, field_instruction, ...)",
            options=UserDefinedOptions,
            inline=True,
            build=build,
            prompt=prompt_row,
        )
    )


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose instruction field (`field_instruction`) is `text`, with no input and an
    empty output: the prompt inference renders."""
    instruction = entry.option("field_instruction") or "instruction"
    return {instruction: text, entry.option("field_output") or "output": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize rows in the user-defined prompt, masking it unless `train_on_inputs`."""
    options = UserDefinedOptions.model_validate(
        {name: entry.option(name) for name in UserDefinedOptions.model_fields}
    )
    style = PromptStyle(options.system_format, options.format, options.no_input_format)
    rows_have_system = options.field_system in dataset.column_names

    def render(row: dict[str, Any]) -> tuple[str, str]:
        if rows_have_system:
            system = text_field(row, options.field_system, required=False)
        else:
            system = options.system_prompt
        prompt = build_prompt(
            text_field(row, options.field_instruction),
            text_field(row, options.field_input, required=False),
            style=style,
            system=system,
            system_no_input=system,
        )
        return prompt, text_field(row, options.field_output)

    required = [options.field_instruction, options.field_output]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
