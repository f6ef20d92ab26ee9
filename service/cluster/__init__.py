"""Operator endpoints for cluster mode: health, tenants with limits and usage, key validation, metrics."""
