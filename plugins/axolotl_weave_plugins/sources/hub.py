"""Hugging Face hub datasets: a `path:` that no other source claims (not a URL, not on disk,
no data-file extension) is a hub name, loaded with `datasets.load_dataset` (`name:`,
`revision:`, `split:`, `data_files:`), streamed for a `pretraining_dataset:` entry.

This is the fallback source (`trylast`): the others are asked first. It gives no `identity`,
so the preprocessing cache is keyed by the loaded dataset's own fingerprint, which follows the
hub revision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from axolotl_weave import DataError, DataSource, hookimpl

PLUGIN_KIND = "source"


def is_hub_name(entry: Any) -> bool:
    """Any path that is not a URL (asked last, after the local sources)."""
    return "://" not in entry.path


@hookimpl(trylast=True)
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register the hub source, asked after every other source."""
    register(
        DataSource(
            "hub",
            is_hub_name,
            load_hub,
            description="a Hugging Face hub dataset",
            problem=not_a_hub_name,
        )
    )


def not_a_hub_name(entry: Any) -> str | None:
    """Why a path no local source found cannot be a hub dataset either (a hub name is `name`
    or `owner/name`), saying where it was looked for on disk; None when it may be one."""
    path = entry.path
    if path.count("/") <= 1 and not path.startswith((".", "/", "~")):
        return None
    where = Path(path).expanduser().absolute()
    return f"no such file or folder (looked for {where}), and not a hub dataset name (owner/name)"


def load_hub(entry: Any, streaming: bool = False) -> Any:
    """The entry's split of a hub dataset (a stream when `streaming`)."""
    from datasets import load_dataset

    try:
        return load_dataset(
            entry.path,
            name=entry.name,
            revision=entry.revision,
            split=entry.split,
            data_files=entry.data_files,
            streaming=streaming,
        )
    except Exception as exc:
        where = Path(entry.path).expanduser().absolute()
        raise DataError(
            f"{entry.label} is neither a local file or folder (looked for {where}) nor a "
            f"loadable hub dataset: {exc}"
        ) from None
