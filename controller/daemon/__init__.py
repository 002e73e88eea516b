"""`tether run`: watch the manifests, queue and back off passes, resync, serve and write metrics,
speak sd_notify.

May import engine, tree, artifacts, manifests and the ground floor; never cli.
"""
