"""The Janus ingress's URL and uids: the HTTP endpoint and query values of a ``janus+http(s)://``
URL, and a publisher's uid from its display name."""

from __future__ import annotations

from cloudrec.ingress.janus import janus_target, uid_for


def test_target_is_the_http_endpoint_with_the_query_values() -> None:
    assert janus_target("janus+https://sfu.example:8089/janus?room=12&secret=s&admin_key=k") == (
        "https://sfu.example:8089/janus", {"room": "12", "secret": "s", "admin_key": "k"})
    assert janus_target("janus+http://h?room=1")[0] == "http://h/janus"


def test_uid_is_the_display_name_made_safe_or_the_id() -> None:
    assert uid_for("alice", 7, set()) == "alice"
    assert uid_for("Jean Dupont (phone)", 7, set()) == "Jean_Dupont_phone"
    assert uid_for(None, 7, set()) == "7"
    assert uid_for("  ", 7, set()) == "7"
    assert uid_for("alice", 7, {"alice"}) == "alice_7"
    assert len(uid_for("x" * 200, 2**52, set())) <= 64
    assert len(uid_for("x" * 200, 2**52, {"x" * 64})) <= 64
