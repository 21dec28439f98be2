"""Studies built on asgd_jax: ``python -m experiments <study>``.

The library (``asgd_jax``) stays pure; this package owns files, plots,
progress bars and data set reading (``experiments.sources``).
"""
