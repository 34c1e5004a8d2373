"""Built-in outputs plugins."""
