"""Pure media: encoded frames in, files out. Never imports ``cloudrec.rooms`` or anything HTTP.

    SourceHlsRecorder   one publisher's EncodedFrames → HLS (remux H.264, Opus → AAC)
    MixedHlsRecorder    many inputs' EncodedFrames → composed, mixed, encoded HLS
    picture_urls        the picture URLs a mixconfig draws (to fetch before mixing)
                        (mixinputs: decoding the inputs; mixout: encoders and segments)
    SegmentInfo         a closed segment as listed in the playlist
    RecorderStats       counters of a recorder
"""

from cloudrec.media.hls import HlsPlaylist, SegmentInfo, parse_playlist
from cloudrec.media.mixed import MixedHlsRecorder, MixedStats, picture_urls
from cloudrec.media.source import RecorderStats, SourceHlsRecorder

__all__ = [
    "HlsPlaylist",
    "MixedHlsRecorder",
    "MixedStats",
    "RecorderStats",
    "SegmentInfo",
    "SourceHlsRecorder",
    "parse_playlist",
    "picture_urls",
]
