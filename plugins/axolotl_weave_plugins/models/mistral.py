"""Placeholder: being written."""

PLUGIN_KIND = "model"
