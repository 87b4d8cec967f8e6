"""Connectors: one module per vendor, yielding core record types (pull) or writing diffs (push)."""
