"""The built-in plugins of Axolotl Weave, each registered through its own entry point."""
