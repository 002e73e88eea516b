"""Desired state: the manifest model (frozen dataclasses), loading, schema validation, cross-manifest
checks, secrets, imperative overrides and the generated reference.

May import only the ground floor.
"""
