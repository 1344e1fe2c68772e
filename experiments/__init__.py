"""Entry-point plumbing (:mod:`experiments.runtime`), benchmarks and the paper's experiments."""
