"""Push ingest: RTMP(S) and SRT listeners that turn publishers into encoded frames.

:class:`~cloudrec.ingest.base.IngestHandler` is what the listeners report to (authorize,
started, frame, ended); :mod:`cloudrec.ingest.rtmp` and :mod:`cloudrec.ingest.srt` hold the
servers. This package's top level loads neither PyAV nor libsrt: import the servers from their
modules.
"""

from .base import (
                   IngestConnection,
                   IngestHandler,
                   IngestRefused,
                   StreamName,
                   parse_rtmp_name,
                   parse_srt_streamid,
)

__all__ = ["IngestConnection", "IngestHandler", "IngestRefused", "StreamName", "parse_rtmp_name",
           "parse_srt_streamid"]
