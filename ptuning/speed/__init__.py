"""Benchmarking only: `ptuning bench` and the GPU check. Never imported by the core."""
