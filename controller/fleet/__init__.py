"""Fleet: this node's identity, the rollout waves it is in, and the Prometheus gate that opens them.

May import tree, artifacts, manifests and the ground floor.
"""
