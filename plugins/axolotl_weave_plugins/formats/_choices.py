"""Shared by the multiple-choice format plugins (`explainchoice`, `concisechoice`): the columns
their rows need and the fields of a row.

Not a plugin (no entry point): a helper of the format plugins in this folder.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import DataError, require_columns, text_field


def require_choice_columns(dataset: Any, entry: Any) -> None:
    """Raise a `DataError` unless the rows have question, choices and solution or explanation."""
    require_columns(dataset, entry, ["question", "choices"])
    if "solution" not in dataset.column_names and "explanation" not in dataset.column_names:
        raise DataError(
            f"dataset '{entry.path}' (type: {entry.type}) lacks the field 'solution' or "
            f"'explanation'; its rows have: {', '.join(dataset.column_names)}"
        )


def choice_fields(row: dict[str, Any]) -> tuple[str, str, str]:
    """(question, choices as `- "choice"` lines, solution or explanation) of a row."""
    choices = row.get("choices")
    if not isinstance(choices, list):
        raise TypeError(
            f"field 'choices' must be a list, got {type(choices).__name__}: {choices!r}"
        )
    rendered = "\n".join(f'- "{choice}"' for choice in choices)
    answer_field = "solution" if row.get("solution") is not None else "explanation"
    return text_field(row, "question"), rendered, text_field(row, answer_field)
