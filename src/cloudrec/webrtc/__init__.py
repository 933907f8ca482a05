"""WebRTC: the WHIP kind of publisher, and the WHIP client that publishes test media.

- :mod:`~cloudrec.webrtc.ingest`: answers WHIP offers with recvonly peer connections and
  writes their media into a :class:`~cloudrec.rooms.hub.RoomHub` (one
  :mod:`~cloudrec.webrtc.session` per publication, offers read by :mod:`~cloudrec.webrtc.offer`,
  ICE settings in :mod:`~cloudrec.webrtc.ice`). The media itself is received by
  :mod:`cloudrec.rtp`.
- :mod:`~cloudrec.webrtc.whip_client` and :mod:`~cloudrec.webrtc.synthetic`: ``cloudrec
  publish``, a WHIP publisher of a test pattern, a tone or a pre-encoded clip.

Only the two ``_aiortc_*`` modules reach into aiortc's and aioice's internals:
:mod:`~cloudrec.webrtc._aiortc_tap` (the receiver, negotiated parameters) and
:mod:`~cloudrec.webrtc._aiortc_transport` (DTLS ciphers, ICE candidates and liveness, the
datagram hook of the lean receive path). Both are pinned to the aiortc and aioice versions they
were written for. Everything else uses aiortc's public API.

The HTTP side of WHIP is :mod:`cloudrec.api.whip`, which imports none of this.
"""
