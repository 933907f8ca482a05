"""The RTP receive stack of a recorder, written for what a recorder needs and nothing more.

- :mod:`~cloudrec.rtp.receiver`: SRTP/SRTCP datagrams of one connection in, whole encoded
  frames out; the RTCP a receiver sends (reports, NACK, PLI/FIR, REMB) back out.
- :mod:`~cloudrec.rtp.jitter`: per-SSRC ordering, loss statistics and NACK recovery.
- :mod:`~cloudrec.rtp.depacketize` with :mod:`~cloudrec.rtp.h264` and :mod:`~cloudrec.rtp.vp8`:
  payloads to access units, one module per codec.
- :mod:`~cloudrec.rtp.rtcp`: the RTCP packets, as bytes.
- :mod:`~cloudrec.rtp.bwe`: the bandwidth estimate sent as REMB.

The package knows nothing of ICE, DTLS or SDP: :mod:`cloudrec.webrtc` negotiates a connection
and hands this stack its datagrams and its libsrtp sessions.
"""
