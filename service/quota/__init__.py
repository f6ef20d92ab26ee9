"""Quotas, rate limits, token buckets, usage metering and reporting."""
