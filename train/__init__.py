"""mner.train: the MGCMT model in PyTorch, its data pipeline, training and evaluation."""
