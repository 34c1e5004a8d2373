"""Built-in batching plugins: how a dataset is cut into micro-batches (`plan_batches`)."""
