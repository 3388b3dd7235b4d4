"""APNet training: model, data, losses, evaluation and the training loop (imports torch)."""
