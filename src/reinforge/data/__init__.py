"""Demonstration datasets in a LeRobot-style on-disk layout (parquet + meta JSON)."""

from __future__ import annotations

from reinforge.data.dataset import DatasetError, DemoDataset, EpisodeWriter, compute_stats

__all__ = ["DatasetError", "DemoDataset", "EpisodeWriter", "compute_stats"]
