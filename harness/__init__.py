"""A live server for the tests and the benchmarks: gunicorn started as `make serve` starts it, a
load generator, and the reliability scenarios."""
