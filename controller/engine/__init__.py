"""One reconcile pass for one application: plan, apply (fetch, hooks, switch, roll back, prune),
and the status document it leaves.

May import tree, artifacts, manifests and the ground floor.
"""
