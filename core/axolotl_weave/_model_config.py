"""`overrides_of_model_config` applied to a model's config, for the plugins that load a model
(re-exported by `axolotl_weave`)."""

from __future__ import annotations

from typing import Any

from axolotl_weave._errors import ConfigError

ROPE_KEYS = ("rope_scaling", "rope_parameters")
"""transformers' names of a config's rotary-embedding settings (`rope_scaling` before 5.0)."""


def override_model_config(config: Any, overrides: dict[str, Any] | None) -> Any:
    """`config` with each override set; a key the config does not have is a `ConfigError`.

    A `rope_scaling` (or `rope_parameters`) mapping such as `{type: linear, factor: 2}` goes over
    the config's own rope parameters, so that what it does not name (`rope_theta`...) stays:
    transformers 5 keeps them all in the one mapping that setting `rope_scaling` replaces. A
    config with a mapping per layer type (`sliding_attention`, `full_attention`) takes it as
    written."""
    known = set(config.to_dict())
    for key, value in (overrides or {}).items():
        if key not in known and not hasattr(config, key):
            raise ConfigError(
                f"overrides_of_model_config.{key}: the {config.model_type} config has no such key"
            )
        current = dict(getattr(config, "rope_parameters", None) or {})
        nested = any(isinstance(part, dict) for part in current.values())
        if key in ROPE_KEYS and isinstance(value, dict) and not nested:
            if "type" in value or "rope_type" in value:
                current.pop("type", None)
                current.pop("rope_type", None)
            value = {**current, **value}
        setattr(config, key, value)
    return config
