"""Signed event callbacks: a durable outbox and its at-least-once delivery."""

from cloudrec.callbacks.outbox import CallbackOutbox, Event, sign

__all__ = ["CallbackOutbox", "Event", "sign"]
