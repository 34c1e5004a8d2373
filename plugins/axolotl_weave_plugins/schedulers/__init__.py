"""Built-in learning-rate schedule plugins."""
