"""Built-in compatibility plugins: other tools' config keys and aliases."""
