"""Machinery shared by the model families: checkpoint files, output containers."""
