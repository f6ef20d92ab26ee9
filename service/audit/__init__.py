"""The audit log: who changed keys, tenants and quotas, and failed authentications.

Written by the features that make the changes (in their own transactions, through store.write);
read by tenant ADMINs (/api/v1/audit) and operators (/api/v1/cluster/audit), both in controller.py.
"""
