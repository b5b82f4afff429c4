"""Execution: engines, the lakehouse table layer, the jobs and the CLI."""
