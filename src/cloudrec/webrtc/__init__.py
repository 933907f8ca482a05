"""WebRTC: the WHIP kind of publisher, and the WHIP client that publishes test media.

- :mod:`~cloudrec.webrtc.ingest`: answers WHIP offers with recvonly peer connections and
  writes their media into a :class:`~cloudrec.rooms.hub.RoomHub` (one
  :mod:`~cloudrec.webrtc.session` per publication, offers read by :mod:`~cloudrec.webrtc.offer`,
  ICE settings in :mod:`~cloudrec.webrtc.ice`). The media itself is received by
  :mod:`cloudrec.rtp`.
- :mod:`~cloudrec.webrtc.viewer`: answers WHEP offers with sendonly peer connections fed from
  a room subscription without decoding (:mod:`~cloudrec.webrtc.viewer_feed`).
- :mod:`~cloudrec.webrtc.whip_client` and :mod:`~cloudrec.webrtc.synthetic`: ``cloudrec
  publish``, a WHIP publisher of a test pattern, a tone or a pre-encoded clip;
  :mod:`~cloudrec.webrtc.whep_client`, a decoding WHEP viewer for tests and benchmarks.

Only the three ``_aiortc_*`` modules reach into aiortc's and aioice's internals:
:mod:`~cloudrec.webrtc._aiortc_tap` (the receiver, negotiated parameters),
:mod:`~cloudrec.webrtc._aiortc_transport` (DTLS ciphers, ICE candidates and liveness, the
datagram hook of the lean receive path) and :mod:`~cloudrec.webrtc._aiortc_sender` (pre-encoded
packets out of a sender, its keyframe requests). All are pinned to the aiortc and aioice
versions they were written for. Everything else uses aiortc's public API.

The HTTP side of WHIP and WHEP is :mod:`cloudrec.api.whip` and :mod:`cloudrec.api.whep`,
which import none of this.
"""
