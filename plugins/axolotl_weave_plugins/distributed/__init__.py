"""Built-in distributed plugins."""
