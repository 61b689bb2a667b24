"""Recipes built on binder's core."""
