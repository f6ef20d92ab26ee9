"""Tenants: the owners of collections and keys."""
