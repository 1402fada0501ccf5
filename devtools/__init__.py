"""Development tools, not used by the production services: the speed figures of
`ballpass bench` (`bench*`, BENCHMARKS.md) and the offline fleet evaluation of
`ballpass evaluate-fleet` (`fleet_eval`, EVALUATION.md).

They may import anything (the simulators, numba, subprocess, git); the production packages
(`ballpass.stream`, `ballpass.gateway`, `ballpass.models`) never import them
(tests/test_import_boundaries.py). The CLI imports them lazily, per command.
"""
