"""Recordings: wire a room's media through a media pipeline into storage."""

from cloudrec.recorder.service import RecordingService

__all__ = ["RecordingService"]
