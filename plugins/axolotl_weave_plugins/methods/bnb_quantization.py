"""Placeholder: being written."""

PLUGIN_KIND = "method"
