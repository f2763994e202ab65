"""Faults injected into a real fleet under load, and what readers saw: ``brigade reliability`` and tests/test_faults.py.

Needs the ``dev`` extra when it starts its own broker and Redis (``brigade reliability`` does).
"""
