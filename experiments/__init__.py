"""Entry-point plumbing (:mod:`app.build`), benchmarks and the paper's experiments."""
