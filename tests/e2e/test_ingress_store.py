"""The ingress store on SQLite and PostgreSQL: rows, states, the claim one front wins, rules."""

from __future__ import annotations

from cloudrec.db import open_database
from cloudrec.ingress import IngressStore


def test_ingresses_and_rules(database: str) -> None:
    db = open_database(database)
    try:
        store = IngressStore(db)
        IngressStore(db)  # a second opener finds the schema in place
        ing = store.create(appid=1, roomid="r", uid="u", url="rtsp://a:b@h/x", kind="rtsp")
        assert ing.state == "connecting" and ing.owner is None and not ing.deleted
        assert store.claim(ing.ingressid, "n/w0", None)
        assert not store.claim(ing.ingressid, "n/w1", None)  # taken
        assert not store.claim(ing.ingressid, "n/w1", "n/w9")  # not its owner
        assert store.claim(ing.ingressid, "n/w1", "n/w0")
        store.set_state(ing.ingressid, "active", None, publishers=[{"uid": "u"}])
        got = store.get(ing.ingressid)
        assert got is not None and got.state == "active" and got.publishers == [{"uid": "u"}]
        since = got.since
        store.set_state(ing.ingressid, "active", None)
        assert store.get(ing.ingressid).since == since  # the same state keeps its since
        store.set_state(ing.ingressid, "retrying", "gone", reconnect=True)
        assert store.get(ing.ingressid).reconnects == 1
        assert store.counts() == {("rtsp", "retrying"): (1, 1)}
        assert [i.ingressid for i in store.owned_by("n/w1")] == [ing.ingressid]
        assert store.get(ing.ingressid, appid=2) is None
        assert store.delete(ing.ingressid) and not store.delete(ing.ingressid)
        assert store.get(ing.ingressid).state == "stopped" and store.ingresses() == []
        assert not store.claim(ing.ingressid, "n/w2", "n/w1")  # deleted: nobody runs it
        rule = store.add_rule(1, "c-*", 2, {"recordtype": 0})
        assert [r.ruleid for r in store.rules(1)] == [rule.ruleid] and store.rules(2) == []
        assert store.delete_rule(1, rule.ruleid) and not store.delete_rule(1, rule.ruleid)
    finally:
        db.close()
