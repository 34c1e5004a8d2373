"""The `gradio_*` keys (Axolotl's names) of `weave inference CONFIG --gradio`, the chat page on
the trained model (see `_gradio.py`).

`gradio_share` is false by default (Axolotl's is true): the page is never given a public
`*.gradio.live` link unless the config says `gradio_share: true`; it listens on
`gradio_server_name` (127.0.0.1, this machine only, by default). A key set to null takes its
default, as in Axolotl's schema, where each key is optional.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, ValidationInfo, field_validator

PLUGIN_KIND = "inference"


class GradioSettings(PluginConfig):
    """The `gradio_*` keys: how `weave inference CONFIG --gradio` serves its chat page."""

    gradio_title: str | None = Field(
        None, description="The chat page's title (default: 'Axolotl Weave: MODEL')."
    )
    gradio_share: bool = Field(
        False,
        description="Also give the page a public *.gradio.live link (anyone with it can use "
        "the model). Off by default.",
    )
    gradio_server_name: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the page listens on: 127.0.0.1 is this machine only; 0.0.0.0 "
        "is every network interface.",
    )
    gradio_server_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the page (default: GRADIO_SERVER_PORT, else the first free of "
        "7860-7959).",
    )
    gradio_max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="The page's default answer length in tokens (default: --max-new-tokens).",
    )
    gradio_temperature: float | None = Field(
        None,
        ge=0,
        description="The page's default temperature, 0 greedy (default: --temperature).",
    )

    @field_validator("gradio_share", "gradio_server_name", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        """`gradio_share: null` / `gradio_server_name: null` mean the default."""
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].default
        return value


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `gradio_*` keys."""
    return GradioSettings
