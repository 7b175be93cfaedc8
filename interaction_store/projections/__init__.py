"""Projections: the views folded from the log, and the runner that keeps them current."""

from interaction_store.projections.runner import Lag, Projection, ProjectionRunner
from interaction_store.projections.timeline import TimelineProjection

__all__ = ["Lag", "Projection", "ProjectionRunner", "TimelineProjection"]
