"""pytest-benchmark suites (not part of the test run): ``pytest benchmarks/ -k tiny``."""
