"""The built-in suites, one file each: throughput, memory, flops, profile, predict."""
