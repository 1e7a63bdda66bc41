"""Unit tests of the drain_agent module's pure logic: `python3 -m unittest discover ansible/tests`.

The module is loaded from ansible/library; it needs ansible-core (ansible.module_utils) importable,
as on any controller. Nothing here runs the agent.
"""

import importlib.util
import json
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location("drain_agent", os.path.join(HERE, "..", "library", "drain_agent.py"))
da = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(da)


def status(mode="in-service", local=True, up=True, journal=None, accept=None, rules=None, sets=None):
    return {
        "mode": mode,
        "lock_holder_pid": None,
        "tracked_interface": {"name": "trk0", "up": up},
        "vips": [{"address": "198.18.0.100", "local": local}],
        "divert_rules": rules or [],
        "divert_sets": sets or [],
        "divert": None,
        "drain_journal": journal or [],
        "accept_journal": accept or [],
        "last_drain": None,
    }


LINK_DOWN = {"at": 1, "pid": 2, "kind": "link-down", "ifname": "trk0"}
TRACK_FAULT = {"at": 1, "pid": 2, "kind": "track-fault", "path": "/var/lib/drain-agent/keepalived.track"}


class JsonLines(unittest.TestCase):
    def test_events_then_the_result(self):
        out = "\n".join([
            json.dumps({"event": "ready", "peer": "198.18.0.12", "sockets": 3, "ts_ms": 1}),
            "not json",
            json.dumps({"event": "progress", "remaining": 2, "ts_ms": 2}),
            json.dumps({"event": "progress", "remaining": 0, "ts_ms": 3}),
            json.dumps({"event": "cleaned-up", "ts_ms": 4}),
            json.dumps({"result": "drained", "report": {"abandoned": 0, "failover_ms": 610.0}}),
            "",
        ])
        docs = da.parse_json_lines(out)
        self.assertEqual(len(docs), 5)
        self.assertEqual(da.final_document(docs)["result"], "drained")
        kinds = [e["event"] for e in da.summarise_events(docs)]
        self.assertEqual(kinds, ["ready", "progress", "cleaned-up"])
        self.assertEqual(da.summarise_events(docs)[1]["remaining"], 0, "the last progress event is kept")

    def test_a_failure_reads_the_failed_document_then_stderr(self):
        docs = da.parse_json_lines('{"result":"failed","exit_code":7,"error":"this node does not hold the VIP"}\n')
        self.assertEqual(da.error_of(docs, "drain-agent: error: other"), "this node does not hold the VIP")
        self.assertEqual(da.error_of([], "x\ndrain-agent: error: bad config\n"), "bad config")
        self.assertEqual(da.error_of([], ""), "")

    def test_messages_say_whether_anything_changed(self):
        for rc in (5, 6, 7):
            self.assertIn("nothing was changed", da.failure_message("e", rc))
            self.assertIn(rc, da.UNCHANGED_CODES)
        self.assertIn("rolled back", da.failure_message("peer lost", 8))
        self.assertEqual(da.failure_message("", 11)[:len("drain-agent failed")], "drain-agent failed")
        self.assertIn("exit 11", da.failure_message("x", 11))
        self.assertIn("unknown exit code", da.failure_message("x", 42))


class Modes(unittest.TestCase):
    def test_a_track_file_drain_reads_drained(self):
        self.assertEqual(da.effective_mode(status()), "in-service")
        self.assertEqual(da.effective_mode(status(journal=[TRACK_FAULT])), "drained")
        self.assertEqual(da.effective_mode(status(mode="drained", up=False, journal=[LINK_DOWN])), "drained")
        self.assertEqual(da.effective_mode(status(mode="busy")), "busy")

    def test_changed_ignores_when_and_by_whom(self):
        a = status(local=False, accept=[{"at": 1, "pid": 9, "kind": "local-route", "addr": "198.18.0.100"}])
        b = status(local=False, accept=[{"at": 5, "pid": 7, "kind": "local-route", "addr": "198.18.0.100"}])
        self.assertEqual(da.state_key(a), da.state_key(b))
        self.assertNotEqual(da.state_key(status()), da.state_key(status(local=False)))
        self.assertNotEqual(da.state_key(status()), da.state_key(status(mode="drained", up=False, local=False,
                                                                        journal=[LINK_DOWN])))


class Plans(unittest.TestCase):
    params = {"deadline": None, "idle_threshold": None, "abort_on_deadline": False, "keep_link_down": False}

    def test_drained_runs_drain_on_the_vip_holder(self):
        p = da.plan_drained(status(), dict(self.params, deadline="90s", abort_on_deadline=True))
        self.assertEqual(p.argv, ["drain", "--abort-on-deadline", "--deadline", "90s"])
        self.assertEqual(p.predicted["mode"], "drained")
        self.assertFalse(da.holds_vip(p.predicted))
        self.assertIn("mode: drained", da.describe(p.predicted))

    def test_drained_is_reached_or_refused_without_running_anything(self):
        self.assertTrue(da.plan_drained(status(mode="drained", up=False, local=False, journal=[LINK_DOWN]),
                                        self.params).reached)
        self.assertTrue(da.plan_drained(status(local=False, journal=[TRACK_FAULT]), self.params).reached)
        for st, rc, words in [
            (status(local=False), 7, "does not hold the VIP"),
            (status(mode="busy"), 6, "another drain-agent operation"),
            (status(mode="divert-installed", rules=["-A X"]), 7, "state=undrained"),
        ]:
            p = da.plan_drained(st, self.params)
            self.assertIsNone(p.argv)
            self.assertEqual(p.rc, rc)
            self.assertIn(words, p.error)

    def test_undrained(self):
        self.assertTrue(da.plan_undrained(status(local=False), self.params).reached)
        p = da.plan_undrained(status(mode="drained", up=False, local=False, journal=[LINK_DOWN]), self.params)
        self.assertEqual(p.argv, ["undrain"])
        self.assertEqual(da.effective_mode(p.predicted), "in-service")
        p = da.plan_undrained(status(journal=[TRACK_FAULT]), dict(self.params, keep_link_down=True))
        self.assertEqual(p.argv, ["undrain", "--keep-link-down"])
        p = da.plan_undrained(status(mode="divert-installed", rules=["-A X"]), self.params)
        self.assertEqual(p.argv, ["undrain"])
        self.assertEqual(da.plan_undrained(status(mode="busy"), self.params).rc, 6)

    def test_every_state_but_status_has_a_planner(self):
        self.assertEqual(sorted(da.PLANNERS), ["drained", "undrained"])


class CheckReport(unittest.TestCase):
    def test_the_first_failing_row_with_its_exit_code(self):
        ok = {"ok": True, "checks": [{"check": "config", "ok": True, "detail": "x"}]}
        self.assertIsNone(da.check_error([ok]))
        bad = {"ok": False, "checks": [
            {"check": "config", "ok": True, "detail": "x"},
            {"check": "peer", "ok": False, "detail": "198.18.0.12 does not answer", "exit_code": 5},
        ]}
        self.assertEqual(da.check_error([bad]), (5, "check peer: 198.18.0.12 does not answer"))
        self.assertEqual(da.check_error([])[0], 1)


if __name__ == "__main__":
    unittest.main()
