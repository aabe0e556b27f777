"""Importance criteria: one score per channel of every prunable group (higher = more important)."""
