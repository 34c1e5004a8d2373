"""The built-in training loop: windows, optimizer steps, evaluation, logging, checkpoints."""
