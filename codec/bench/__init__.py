"""Benchmarks behind ``codec bench``: model speed, streaming cost and memory (``model``), the residual
quantizer's throughput (``rvq``), and the command that runs them and prints the tables (``cli``)."""
