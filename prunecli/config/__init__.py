"""Pipeline configuration: schema, loading, overrides, JSON Schema export."""

from prunecli.config.schema import Pipeline

__all__ = ["Pipeline"]
