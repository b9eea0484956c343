"""mner.benchmarks: latency, throughput and parity reports (mner-bench) and standalone timing scripts."""
