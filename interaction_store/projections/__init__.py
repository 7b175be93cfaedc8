"""Projections: the views folded from the log, and the runner that keeps them current."""

from interaction_store.projections.conversations import ConversationsProjection
from interaction_store.projections.customers import CustomersProjection
from interaction_store.projections.runner import Lag, Projection, ProjectionRunner
from interaction_store.projections.timeline import TimelineProjection

__all__ = [
    "ConversationsProjection",
    "CustomersProjection",
    "Lag",
    "Projection",
    "ProjectionRunner",
    "TimelineProjection",
    "all_projections",
]


def all_projections() -> list[Projection]:
    """Every view interaction-store keeps: the timeline (with the identity graph), the
    customers' profiles and the conversations."""
    return [TimelineProjection(), CustomersProjection(), ConversationsProjection()]
