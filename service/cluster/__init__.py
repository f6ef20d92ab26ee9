"""Operator endpoints for cluster mode, and the audit log."""
