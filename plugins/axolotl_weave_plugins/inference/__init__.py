"""Built-in inference plugins: `weave inference` and `weave serve`."""
