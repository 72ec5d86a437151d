"""Basalt's CSI agent: a gRPC daemon serving CSI v1.12 on the storage core."""

from importlib import metadata

DRIVER_NAME = "csi.basalt.dev"
TOPOLOGY_NODE_KEY = "topology.basalt.dev/node"

try:
    __version__ = metadata.version("basalt-csi")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
