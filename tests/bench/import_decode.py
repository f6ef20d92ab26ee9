"""One import chunk through the decode worker's code (service/imports/staging), alone: CPU seconds
and peak memory above the process's own baseline, each repetition in a fresh process.

The worker's way with the chunk is what its code offers: stage_chunk_file (the chunk spooled to a
file, read and decrypted in pieces) where it exists, else stage_chunk on the file's bytes, read in
by the process (older code, where the server sent the bytes to the worker). Either way the file's
bytes count: the baseline is taken before the file is read.

A chunk is 10,000 x 384 (what the SDK writes), AES-256-GCM encrypted, JSON or CBOR. Run it against
another checkout's code with PYTHONPATH=<checkout> to compare two versions on one machine.

    python -m tests.bench.import_decode [--encoding json|cbor] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.s5_fixtures import build

_CHILD = """
import inspect, sys, time
from service.imports import staging
from service.imports.formats import ChunkInfo
from service.imports.staging import TargetSpec, stage_chunk
key = bytes.fromhex(sys.argv[2])
info = ChunkInfo(chunk_id=0, cid="x", vector_count=10_000)
spec = TargetSpec(dimension=384, storage="float32", metric="cosine", max_metadata_bytes=65536)
def hwm():  # VmHWM, KiB (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm()  # the imports
cpu = time.process_time()
if hasattr(staging, "stage_chunk_file"):
    staged = staging.stage_chunk_file(sys.argv[1], key, info, spec)
else:
    raw = open(sys.argv[1], "rb").read()
    # As the import runner passed it, where the code accepts that (the worker may then drop the file).
    arg = [raw] if "list" in str(inspect.signature(stage_chunk)) else raw
    del raw
    staged = stage_chunk(arg, key, info, spec)
cpu = time.process_time() - cpu
peak = hwm()
print(f"{cpu:.3f} {(peak - base) / 1024:.1f} {base / 1024:.1f} {staged.count}")
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoding", choices=["json", "cbor"], default="json")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    key = os.urandom(32)
    db = build(n=10_000, dimensions=384, chunk_size=10_000, encoding=args.encoding, key=key, name="decode")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chunk-0.json"
        path.write_bytes(db.files[f"{db.folder}/chunk-0.json"])
        file_mib = round(path.stat().st_size / 2**20, 1)
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), key.hex()],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            runs.append(
                {"cpu_s": float(out[0]), "peak_above_base_mib": float(out[1]), "base_mib": float(out[2])}
            )
    print(
        json.dumps(
            {
                "encoding": args.encoding,
                "file_mib": file_mib,
                "vector_mib": round(10_000 * 384 * 4 / 2**20, 1),
                "cpu_s_min": min(r["cpu_s"] for r in runs),
                "peak_above_base_mib_max": max(r["peak_above_base_mib"] for r in runs),
                "runs": runs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
