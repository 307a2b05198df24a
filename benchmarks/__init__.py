"""Op benchmarks, one script per op (shipped as pyprobtf.benchmarks; run them with `pyprobtf bench`)."""
