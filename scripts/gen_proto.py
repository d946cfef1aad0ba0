"""Regenerate fedpeer/proto/ from proto/ (run after editing a .proto; a test checks for drift).

python scripts/gen_proto.py            # write into fedpeer/proto/
python scripts/gen_proto.py --out DIR  # write elsewhere (the drift test compares)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ] + [str(p) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Generated modules import `fedpeer.proto.v1...`: every folder below fedpeer/ needs an __init__.py.
    pkg_root = out_dir / "fedpeer"
    for d in {p.parent for p in pkg_root.rglob("*_pb2.py")}:
        while d != pkg_root:
            (d / "__init__.py").touch()
            d = d.parent
    return sorted((out_dir / "fedpeer" / "proto").rglob("*.py*"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT)
    a = ap.parse_args()
    files = generate(a.out)
    print(f"generated {len(files)} files under {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
