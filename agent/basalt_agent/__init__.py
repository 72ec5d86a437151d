"""Basalt's CSI agent: a gRPC daemon serving CSI v1.12 on the storage core."""

DRIVER_NAME = "csi.basalt.dev"
TOPOLOGY_NODE_KEY = "topology.basalt.dev/node"

# The package's version, read by pyproject.toml (tool.setuptools.dynamic) at build time. Stated here rather
# than asked of importlib.metadata at run time: that import alone (email, zipfile, csv...) holds about
# 1.6 MiB of a resident agent.
__version__ = "0.1.0"
