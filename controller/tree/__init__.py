"""An application's tree on disk: records in `.tether/`, the lock, ownership, persistent data from
`.mtree`, the path-safety checks, content digests and drift.

May import artifacts, manifests and the ground floor.
"""
