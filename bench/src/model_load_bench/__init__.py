"""Benchmarks, soak and capacity runs of the stack. Each module with a main() runs as
`python -m model_load_bench.<module>`; the Makefile's benchmarks section runs them all."""
