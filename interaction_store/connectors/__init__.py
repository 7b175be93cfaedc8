"""Channel connectors: pure mappings from what a source system sends to events.

Each takes the source's payload (and an injected clock) and returns wire-shaped events; none
touches SQL. The HTTP routes and CLI commands that feed them live with the API and the CLI.
"""

__all__: list[str] = []
