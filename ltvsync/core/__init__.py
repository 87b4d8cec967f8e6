"""Core: records, store, identity, metrics, LTV models, tags, cohorts and the sync pipeline.

The core never speaks HTTP and knows no vendor: sources and destinations arrive as objects.
"""
