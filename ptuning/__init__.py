"""ptuning: a reference harness comparing parameter-efficient fine-tuning methods on T5-small / IMDb."""

__version__ = "0.1.0"
