"""Getting a release onto disk safely: download with limits and retries, archive formats, member
checks, safe extraction, and the artifact cache.

May import manifests and the ground floor.
"""
