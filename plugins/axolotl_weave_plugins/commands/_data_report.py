"""`weave preprocess --debug`: rows token by token with their labels, and a data summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axolotl_weave import IGNORE_INDEX
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset


def render_tokens(tokenizer: Any, input_ids: list[int], labels: list[int] | None) -> Text:
    """Each token as `text(label, id)`: masked ones (label -100) dim red, trained ones green;
    without labels (a prompt to generate from) `text(id)`, unstyled."""
    text = Text()
    for index, token_id in enumerate(input_ids):
        piece = tokenizer.decode([token_id])
        if labels is None:
            text.append(f"{piece!r}({token_id}) ")
            continue
        label = labels[index]
        style = "dim red" if label == IGNORE_INDEX else "bold green"
        text.append(f"{piece!r}", style=style)
        text.append(f"({label}, {token_id}) ", style=style)
    return text


SEQUENCE_SUFFIX = "input_ids"
NOT_SHOWN = ("attention_mask", "labels", "length", "position_ids", "num_tokens")


def render_row(tokenizer: Any, row: dict[str, Any]) -> Text:
    """A row of any format: an SFT row's tokens as `render_tokens` shows them; a row with other
    columns (a preference pair's `chosen_*` and `rejected_*`, a prompt to generate from) each
    sequence under its name, then the row's other values."""
    if set(row) <= {"input_ids", "labels", *NOT_SHOWN}:
        return render_tokens(tokenizer, row["input_ids"], row.get("labels"))
    text = Text()
    for column, value in row.items():
        if column.endswith(SEQUENCE_SUFFIX):
            prefix = column[: -len(SEQUENCE_SUFFIX)]
            text.append(f"{prefix.rstrip('_') or 'tokens'}: ", style="bold")
            text.append_text(render_tokens(tokenizer, value, row.get(f"{prefix}labels")))
            text.append("\n")
        elif not column.endswith(NOT_SHOWN):
            text.append(f"{column}: ", style="bold")
            text.append(f"{value!r}\n")
    return text


def render_rows(tokenizer: Any, dataset: Dataset | IterableDataset, count: int) -> list[Text]:
    """The first `count` rows (of a dataset or a stream) rendered by `render_row`."""
    if hasattr(dataset, "__len__"):
        rows = dataset.select(range(min(count, len(dataset))))
    else:
        rows = dataset.take(count)
    return [render_row(tokenizer, row) for row in rows]


def summary_table(stats: Any, lengths: list[int], sequence_len: int) -> Table:
    """Rows kept and dropped (and why), token counts, and a length histogram (`stats`: the
    prepared data's `DataStats`)."""
    from axolotl_weave.commands import drop_reasons

    table = Table(title="Preprocessing summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for item in stats.per_dataset:
        name = f"{item.get('where', '')} {item['path']} ({item['type'] or 'pre-tokenized'})"
        if item.get("streamed"):
            table.add_row(name, "streamed while training")
        else:
            table.add_row(name, f"{item['kept']} of {item['rows']} rows kept")
    table.add_row("rows in", str(stats.rows_in))
    for reason, count in drop_reasons(stats, sequence_len):
        table.add_row(reason, str(count))
    table.add_row("rows kept", str(stats.rows_kept))
    table.add_row("train / eval rows", f"{stats.train_rows} / {stats.eval_rows}")
    table.add_row("tokens (trained)", f"{stats.tokens} ({stats.target_tokens})")
    if lengths:
        table.add_row("length min / mean / max", length_summary(lengths))
    for label, count in length_histogram(lengths, sequence_len):
        table.add_row(
            f"length {label}",
            f"{count} {'█' * max(1, round(40 * count / max(len(lengths), 1))) if count else ''}",
        )
    return table


def length_summary(lengths: list[int]) -> str:
    """'min / mean / max' of row lengths."""
    return f"{min(lengths)} / {sum(lengths) / len(lengths):.1f} / {max(lengths)}"


def length_histogram(lengths: list[int], sequence_len: int, bins: int = 8) -> list[tuple[str, int]]:
    """Counts of row lengths in `bins` equal ranges up to `sequence_len`."""
    width = max(1, -(-sequence_len // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - 1) // width, bins - 1)] += 1
    return [
        (f"{i * width + 1}-{min((i + 1) * width, sequence_len)}", c) for i, c in enumerate(counts)
    ]
