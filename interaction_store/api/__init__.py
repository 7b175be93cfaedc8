"""The HTTP API (v1): reads for agent tools, appends for connectors, health for operators."""

from interaction_store.api.app import create_app

__all__ = ["create_app"]
