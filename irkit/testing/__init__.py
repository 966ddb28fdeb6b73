"""Helpers for irkit's tests and benchmarks: seeded models and data, built offline.

Needs the ``torch`` and ``models`` extras; nothing in the compiler imports this package.
"""
