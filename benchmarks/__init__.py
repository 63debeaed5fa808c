"""Side-by-side benchmarks of diskledger against its baselines: ``python -m benchmarks``.

Each benchmark runs diskledger (A) and a baseline (B) alternately, trial by trial, and reports
medians, their ratio or difference, and whether the target in docs/performance.md was met. The
process exits 0 whatever the figures are; it fails only when something errors.
"""
