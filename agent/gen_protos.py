#!/usr/bin/env python3
"""Regenerate the checked-in protobuf/gRPC Python code for the Basalt agent.

Usage: python agent/gen_protos.py [--out DIR]

Compiles basalt_agent/proto/csi.proto and basalt_agent/proto/pluginregistration.proto
with grpcio-tools' bundled protoc. The include root is this script's directory
(agent/), so the generated *_pb2_grpc.py modules import their messages package-
qualified ("from basalt_agent.proto import csi_pb2"). Output goes to agent/ by
default (files land next to the .proto sources); --out writes the same tree
under another directory, which the drift test uses to compare against the
checked-in files.

The generated code depends on the exact protoc version, so this refuses to run
unless grpcio-tools is exactly GRPCIO_TOOLS_PIN.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

GRPCIO_TOOLS_PIN = "1.84.0"

AGENT_DIR = Path(__file__).resolve().parent
PROTO_FILES = (
    "basalt_agent/proto/csi.proto",
    "basalt_agent/proto/pluginregistration.proto",
)
EXIT_WRONG_TOOLS = 2


def installed_grpcio_tools() -> str | None:
    """Return the installed grpcio-tools version, or None if it is missing."""
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return None


def generated_files() -> list[str]:
    """Paths (relative to the output root) of every file this script writes."""
    out: list[str] = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        out.extend([f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"])
    return out


def generate(out_dir: Path) -> int:
    """Run protoc into out_dir; return protoc's exit status."""
    from grpc_tools import protoc  # imported late: only after the pin check

    wkt_include = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={AGENT_DIR}",
        f"--proto_path={wkt_include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    status: int = protoc.main(args)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=AGENT_DIR,
        help="output root (default: the agent directory, i.e. in place)",
    )
    ns = parser.parse_args(argv)

    found = installed_grpcio_tools()
    if found != GRPCIO_TOOLS_PIN:
        print(
            f"gen_protos: grpcio-tools=={GRPCIO_TOOLS_PIN} is required "
            f"(found {found or 'none'}); the generated code must not drift.\n"
            f"  install it with: pip install 'grpcio-tools=={GRPCIO_TOOLS_PIN}'",
            file=sys.stderr,
        )
        return EXIT_WRONG_TOOLS

    out_dir: Path = ns.out.resolve()
    status = generate(out_dir)
    if status != 0:
        print(f"gen_protos: protoc failed with status {status}", file=sys.stderr)
        return 1
    for rel in generated_files():
        print(out_dir / rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
