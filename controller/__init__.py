"""tether: a node-local continuous-delivery controller."""

__version__ = "0.2.0"
