"""Shared fixtures: the tiny llama, small data files and configs come from axolotl_weave_testing.

pytest-xdist's workers run with COLUMNS=80 and LINES=24 in their environment; the `weave`
processes the tests start would inherit them and format their tables for an 80-column terminal,
so they are dropped, and every test sees what a plain pipe gives."""

import os

pytest_plugins = ["axolotl_weave_testing"]

for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
