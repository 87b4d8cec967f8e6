"""ltvsync: pull customer facts from SaaS tools, compute lifetime value, push it back."""

__version__ = "0.1.0"
