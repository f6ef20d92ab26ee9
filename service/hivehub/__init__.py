"""The HiveHub client (cluster mode): key validation, tenant quotas, usage reports."""
