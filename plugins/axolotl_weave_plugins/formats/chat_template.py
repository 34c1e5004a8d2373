"""Placeholder: being written."""

PLUGIN_KIND = "format"
