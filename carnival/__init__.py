"""Carnival: the event-streaming pipeline for the car compute cloud."""

__version__ = "0.1.0"
