"""Data preparation plugins: the built-in pipeline (`prepare_datasets`)."""
