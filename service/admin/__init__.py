"""Operator endpoints: tenants and their keys."""
