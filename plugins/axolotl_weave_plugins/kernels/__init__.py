"""Built-in kernels plugins."""
