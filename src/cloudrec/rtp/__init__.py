"""The RTP receive stack of a recorder, and the send stack of a WHEP viewer, each written for
what it needs and nothing more.

- :mod:`~cloudrec.rtp.receiver`: SRTP/SRTCP datagrams of one connection in, whole encoded
  frames out; the RTCP a receiver sends (reports, NACK, PLI/FIR, REMB) back out.
- :mod:`~cloudrec.rtp.jitter`: per-SSRC ordering, loss statistics and NACK recovery.
- :mod:`~cloudrec.rtp.depacketize` with :mod:`~cloudrec.rtp.h264` and :mod:`~cloudrec.rtp.vp8`:
  payloads to access units, one module per codec.
- :mod:`~cloudrec.rtp.rtcp`: the RTCP packets, as bytes.
- :mod:`~cloudrec.rtp.bwe`: the bandwidth estimate sent as REMB.
- :mod:`~cloudrec.rtp.packetize`: a frame's RTP payloads (H.264 STAP-A/FU-A, VP8, Opus), built
  once for every viewer of a publication.
- :mod:`~cloudrec.rtp.sender`: one viewer connection's RTP out (its own headers, SRTP,
  ``sendto``), its NACKs answered from a packet cache (RTX where negotiated), PLI/FIR in,
  sender reports out.

The package knows nothing of ICE, DTLS or SDP: :mod:`cloudrec.webrtc` negotiates a connection
and hands this stack its datagrams and its libsrtp sessions.
"""
