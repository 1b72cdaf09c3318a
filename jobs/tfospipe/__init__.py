"""Shared code of the TFoS pipeline jobs, shipped to the executors with --py-files."""
