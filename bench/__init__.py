"""Benchmarks for the chat websocket (see docs/benchmarks.md). Not imported by the app."""
