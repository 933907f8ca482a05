"""The HTTP surface: the recordoss control plane, WHIP ingest and the /publish page."""

from cloudrec.api.app import create_app

__all__ = ["create_app"]
