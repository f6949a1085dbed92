"""Leaf helpers every layer may use: atomic file output, Markdown tables, progress bars.

Nothing here imports another part of attnvar.
"""
