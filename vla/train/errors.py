"""The training error type (its own module: setup, batches and the loop all raise it)."""


class TrainError(ValueError):
    """A config, dataset or run directory that cannot be trained on; raised before any compute."""
