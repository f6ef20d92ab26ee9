"""API keys, principals, authentication and permission guards."""
