"""Generated gRPC/protobuf code for CSI v1.12 and kubelet plugin registration (see agent/gen_protos.py)."""
