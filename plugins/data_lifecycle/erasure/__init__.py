"""Right to erasure: remove or mask one person's data everywhere it is mapped, provably.

- ``subject_map``: where the data lives (tables, join paths, bucket prefixes) and how it is erased;
- ``coverage``: fails when a column referencing the subject is not in the map;
- ``planner`` / ``executor``: foreign-key order, counts, keyset-batched deletes and masks;
- ``s3_purge``: every object version and delete marker, refused under Object Lock;
- ``ledger`` / ``keys``: the append-only record, holding only a keyed hash and a sealed token;
- ``steps``: the DAG steps (erase, verify, record, replay, deadline report).
"""
