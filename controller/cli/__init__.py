"""The `tether` command line: argument parsing, the imperative commands and their output.

May import every layer below it: daemon, engine, tree, artifacts, manifests and the ground floor.
"""
