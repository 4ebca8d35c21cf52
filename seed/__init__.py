"""Starter menu templates and the loader for files in the platform's template format."""
