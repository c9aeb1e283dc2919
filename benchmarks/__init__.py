"""invsr-bench: latency, memory and quality-drift benchmarks."""
