"""The benchmarks' own machinery (bench/), over fakes."""
