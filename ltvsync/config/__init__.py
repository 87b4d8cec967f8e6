"""Configuration: one typed object built once at start-up (TOML file + environment) and passed down."""

from ltvsync.config.settings import Settings

__all__ = ["Settings"]
