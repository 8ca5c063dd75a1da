"""Executors: how the engine core reaches its workers (in process, processes, Ray actors)."""
