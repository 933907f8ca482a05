"""Pure media: encoded frames in, files out. Never imports ``cloudrec.rooms`` or anything HTTP.

Import the module you use; this package imports nothing.

    codecs/     each codec's bitstream helpers (H.264, VP8, AAC): pure Python, no PyAV
    hls         the playlist and its segment list (no PyAV)
    segmenter   MPEG-TS segments and their life cycle (``.part``, fsync, rename, listing)
    source      one publisher's frames → HLS (remux H.264 and AAC-LC, transcode the rest)
    transcode   video that is not H.264 → H.264
    audio       any decodable audio → AAC-LC 48 kHz (the encoder and its chain)
    audiotrack  one publisher's Opus/AAC on a recording's timeline (AAC-LC remuxed)
    normalize   an ingested publication → H.264 + Opus/AAC, at the edge of the room
    mp4         HLS → one MP4 file
    snapshot    JPEG snapshots of a publisher's key frames or a mix's canvas
    mix/        many inputs → one composed, mixed, encoded HLS recording, and its process
    push/       live push of a mix to RTMP/SRT URLs, one process per URL
"""
