"""The floor of the house: settings, structured logs and Prometheus metrics.

Nothing here imports any other Carnival package; every other package may import this one.
"""
