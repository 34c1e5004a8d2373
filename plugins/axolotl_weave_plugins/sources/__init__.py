"""Built-in data source plugins: where the rows of a `datasets:` entry come from."""
