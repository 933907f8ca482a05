"""Pure media: encoded frames in, files out. Never imports ``cloudrec.rooms`` or anything HTTP.

    SourceHlsRecorder   one publisher's EncodedFrames → HLS (remux H.264, Opus → AAC)
    SegmentInfo         a closed segment as listed in the playlist
    RecorderStats       counters of a recorder
"""

from cloudrec.media.hls import HlsPlaylist, SegmentInfo, parse_playlist
from cloudrec.media.source import RecorderStats, SourceHlsRecorder

__all__ = ["HlsPlaylist", "RecorderStats", "SegmentInfo", "SourceHlsRecorder", "parse_playlist"]
