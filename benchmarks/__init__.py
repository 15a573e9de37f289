"""Side-by-side benchmarks of the lifecycle operators against the simple way of doing the same work.

Every figure that matters is a ratio taken in one run on one machine (absolute times drift on shared
machines). ``python -m benchmarks`` (``make bench``) runs them all, writes ``benchmarks/results/*.json``
and prints the table; the README's Performance section shows the latest one.
"""
