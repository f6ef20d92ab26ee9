"""Read-only sessions with delegation tokens (Ed25519 JWTs), and the keys that sign them."""
