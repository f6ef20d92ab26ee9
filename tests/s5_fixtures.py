"""Builds S5 vector databases the way a Fabstir-style SDK stores them: a manifest and chunk files,
JSON or CBOR, plain or AES-256-GCM encrypted (Web Crypto layout: nonce | ciphertext | tag)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import cbor2
import msgspec
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OWNER = "0x" + "ab" * 20


@dataclass
class S5Database:
    user_address: str
    name: str
    dimensions: int
    vectors: np.ndarray
    files: dict[str, bytes] = field(default_factory=dict)  # path below the portal's /s5/fs/

    @property
    def folder(self) -> str:
        return f"home/vector-databases/{self.user_address}/{self.name}"

    @property
    def manifest_path(self) -> str:
        return f"{self.folder}/manifest.json"


def encode(document: Any, encoding: str, key: bytes | None) -> bytes:
    raw = msgspec.json.encode(document) if encoding == "json" else cbor2.dumps(document)
    if key is None:
        return raw
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, raw, None)


def build(
    *,
    n: int = 250,
    dimensions: int = 8,
    chunk_size: int = 100,
    encoding: str = "json",
    key: bytes | None = None,
    owner: str = OWNER,
    name: str = "notes",
    seed: int = 0,
    manifest_overrides: dict[str, Any] | None = None,
    id_format: str = "doc-{i}",
    vectors: np.ndarray | None = None,
) -> S5Database:
    """An SDK-style vector database of `n` vectors: the given ones, or standard normal ones."""
    if vectors is None:
        vectors = np.random.default_rng(seed).normal(size=(n, dimensions)).astype(np.float32)
    assert vectors.shape == (n, dimensions)
    db = S5Database(user_address=owner, name=name, dimensions=dimensions, vectors=vectors)
    chunks = []
    for chunk_id, start in enumerate(range(0, n, chunk_size)):
        part = [
            {"id": id_format.format(i=i), "vector": vectors[i].tolist(), "metadata": {"i": i, "source": "s5"}}
            for i in range(start, min(start + chunk_size, n))
        ]
        path = f"{db.folder}/chunk-{chunk_id}.json"
        db.files[path] = encode({"chunkId": chunk_id, "vectors": part}, encoding, key)
        chunks.append(
            {"chunkId": chunk_id, "cid": path, "vectorCount": len(part), "sizeBytes": len(db.files[path])}
        )
    manifest = {
        "name": name,
        "owner": owner,
        "description": "fixture",
        "dimensions": dimensions,
        "vectorCount": n,
        "storageSizeBytes": sum(len(v) for v in db.files.values()),
        "created": 1_700_000_000_000,
        "lastAccessed": 1_700_000_000_000,
        "updated": 1_700_000_000_000,
        "chunks": chunks,
        "chunkCount": len(chunks),
        "folderPaths": [],
        "deleted": False,
    }
    manifest.update(manifest_overrides or {})
    db.files[db.manifest_path] = encode(manifest, encoding, key)
    return db
