"""Pull ingress and auto-record rules.

- :mod:`~cloudrec.ingress.store`: ingresses and rules in the shared database (light: the
  control plane reads it);
- :mod:`~cloudrec.ingress.guard`: the SSRF guard for source URLs (light);
- worker side, loaded only by workers: :mod:`~cloudrec.ingress.manager` runs the ingresses a
  worker owns, one :mod:`~cloudrec.ingress.runner` each (PyAV demux in
  :mod:`~cloudrec.ingress.demux`, SRT in :mod:`~cloudrec.ingress.srt_pull`, WHEP in
  :mod:`cloudrec.webrtc.whep_pull`; a Janus room is not mirrored yet);
  :mod:`~cloudrec.ingress.autorecord` records publishers of rooms that match a rule.
"""

from .store import STATES, Ingress, IngressStore, Rule

__all__ = ["STATES", "Ingress", "IngressStore", "Rule"]
