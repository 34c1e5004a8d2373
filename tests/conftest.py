"""Shared fixtures: the tiny llama, small data files and configs come from axolotl_weave_testing."""

pytest_plugins = ["axolotl_weave_testing"]
