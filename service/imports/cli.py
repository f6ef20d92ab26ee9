"""`vectorhive import s5`: submit an import to a running server, show its progress, wait for the end.

Exit status 0 when the import is loaded, 1 when it ends in error or is cancelled (its code and
message are printed), 2 when the request itself is refused, 130 after Ctrl-C (which cancels it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

import httpx

from service.imports.models import FINISHED, ImportStatus

BAR_WIDTH = 30


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = f"{body.get('detail') or body.get('title')} ({body.get('code')}, HTTP {response.status_code})"
        for error in body.get("errors") or []:
            # The field-level reasons: the detail names only the first.
            text += f"\n  {error.get('field') or error.get('source') or 'request'}: {error.get('message')}"
        return text
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


def render_progress(status: dict[str, Any]) -> str:
    done, total = status.get("chunks_done") or 0, status.get("chunks_total")
    if total:
        filled = int(BAR_WIDTH * done / total)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"[{bar}] {done}/{total} chunks, {status['vectors_loaded']:,} vectors, {status['status']}"
    return f"[{'.' * BAR_WIDTH}] {status['status']}"


class _Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, status: dict[str, Any]) -> None:
        line = render_progress(status)
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.stream.write("\r" + line.ljust(79))
        else:  # a log: one line per change
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _secret(value: str | None, file: str | None, env: str) -> str | None:
    """A secret from its option, its file (first line; '-' is stdin) or its variable, in that order.

    Files and variables keep the secret out of the process list, which shows every argument."""
    if value:
        return value
    if file:
        text = sys.stdin.readline() if file == "-" else open(file, encoding="utf-8").readline()  # noqa: SIM115
        return text.strip() or None
    return os.environ.get(env) or None


def run(args: argparse.Namespace, *, poll_seconds: float = 0.25) -> int:
    try:
        key = _secret(args.key, args.key_file, "VECTORHIVE_API_KEY")
        encryption_key = _secret(
            args.encryption_key, args.encryption_key_file, "VECTORHIVE_S5_ENCRYPTION_KEY"
        )
    except OSError as exc:
        print(f"vectorhive import: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if not key:
        print("vectorhive import: give --key-file PATH or set VECTORHIVE_API_KEY (or --key)", file=sys.stderr)
        return 2
    body: dict[str, Any] = {
        "source": "s5",
        "manifest_path": args.manifest,
        "user_address": args.user,
        "create_collection": not args.no_create,
    }
    if encryption_key:
        body["encryption_key"] = encryption_key
    headers = {"Authorization": f"Bearer {key}"}
    base = args.url.rstrip("/")
    progress = _Progress(sys.stderr)
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        try:
            response = http.post(f"/api/v1/collections/{args.collection}/imports", json=body)
        except httpx.HTTPError as exc:
            print(f"vectorhive import: cannot reach {base}: {exc}", file=sys.stderr)
            return 2
        if response.status_code != 202:
            print(f"vectorhive import: refused: {_problem(response)}", file=sys.stderr)
            return 2
        import_id = response.json()["import_id"]
        print(f"import {import_id} accepted", file=sys.stderr)
        status: dict[str, Any] = response.json()
        try:
            while True:
                response = http.get(f"/api/v1/imports/{import_id}")
                if response.status_code != 200:
                    progress.end()
                    print(f"vectorhive import: {_problem(response)}", file=sys.stderr)
                    return 1
                status = response.json()
                progress.show(status)
                if status["status"] in FINISHED:
                    break
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            progress.end()
            http.delete(f"/api/v1/imports/{import_id}")
            print(f"vectorhive import: cancelled import {import_id}", file=sys.stderr)
            return 130
    progress.end()
    print(json.dumps(status), file=sys.stdout)
    if status["status"] == ImportStatus.LOADED:
        cached = " (cached: unchanged since the last import)" if status.get("cached") else ""
        print(
            f"loaded {status['vectors_loaded']:,} vectors into '{args.collection}' "
            f"in {status['duration_ms']:.0f} ms{cached}",
            file=sys.stderr,
        )
        return 0
    error = status.get("error") or {}
    print(
        f"vectorhive import: {status['status']}: {error.get('message', '')} ({error.get('code', '')})",
        file=sys.stderr,
    )
    return 1


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    imports = commands.add_parser("import", parents=[common], help="import vectors from elsewhere")
    sources = imports.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    s5 = sources.add_parser(
        "s5",
        parents=[common],
        help="import a vector database stored on S5 through a running server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s5.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    s5.add_argument(
        "--key",
        help="an API key with read_write permission; visible in the process list, so prefer "
        "--key-file or env VECTORHIVE_API_KEY",
    )
    s5.add_argument("--key-file", metavar="PATH", help="read the API key from this file ('-': stdin)")
    s5.add_argument("--collection", required=True, help="the target collection")
    s5.add_argument(
        "--manifest", required=True, metavar="PATH", help="home/vector-databases/.../manifest.json"
    )
    s5.add_argument("--user", required=True, metavar="ADDR", help="the owner's address, 0x + 40 hex digits")
    s5.add_argument(
        "--encryption-key",
        metavar="K",
        help="AES-256-GCM key, hex or base64; visible in the process list, so prefer "
        "--encryption-key-file or env VECTORHIVE_S5_ENCRYPTION_KEY",
    )
    s5.add_argument(
        "--encryption-key-file", metavar="PATH", help="read the encryption key from this file ('-': stdin)"
    )
    s5.add_argument("--no-create", action="store_true", help="fail if the collection does not exist")
    s5.set_defaults(handler=lambda settings, args: run(args))
