"""Live push of a mix's encoded stream to RTMP/SRT URLs.

Import the module you use; this package imports nothing.

    fanout      the mix's side: one supervised child process per URL, bounded queues, backoff
    pusher      the child process that muxes one URL (``python -m cloudrec.media.push.pusher``)
    srt         the ``srt://`` side: MPEG-TS sent over an SRT caller connection (libsrt)
"""
