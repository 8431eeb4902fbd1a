"""Running one job end to end: the runner, checkpoints, locks, signals, concurrent runs."""
