"""Leaf helpers every layer may use: atomic file output, the results-directory lock,
Markdown tables, progress bars, worker thread limits.

Nothing here imports another part of attnvar.
"""
