# Copyright (c) 2026, the drain-agent developers
# SPDX-License-Identifier: MIT OR Apache-2.0

"""Unit tests of the drain_agent module's pure logic (tests/ansible_static.rs runs them with
`python3 -m unittest discover -s tests/unit/plugins/modules`, from the collection's directory).

The module is loaded from its file, so the tests run from the repository without installing the
collection; it needs ansible-core (ansible.module_utils) importable, as on any controller.
Nothing here runs the agent.
"""

import importlib.util
import json
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location("drain_agent", os.path.join(HERE, "..", "..", "..", "..", "plugins", "modules", "drain_agent.py"))
da = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(da)


def status(mode="serving", local=True, up=True, journal=None, accept=None, rules=None, sets=None):
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
        "return_journal": [],
        "maintenance": None,
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
    def test_out_of_service_modes(self):
        for mode in ("failed-over", "handing-off", "maintenance"):
            self.assertTrue(da.out_of_service(status(mode=mode, local=False)), mode)
        for mode in ("serving", "draining", "busy", "returning", "diverting"):
            self.assertFalse(da.out_of_service(status(mode=mode)), mode)

    def test_changed_ignores_when_and_by_whom(self):
        a = status(local=False, accept=[{"at": 1, "pid": 9, "kind": "local-route", "addr": "198.18.0.100"}])
        b = status(local=False, accept=[{"at": 5, "pid": 7, "kind": "local-route", "addr": "198.18.0.100"}])
        self.assertEqual(da.state_key(a), da.state_key(b))
        self.assertNotEqual(da.state_key(status()), da.state_key(status(local=False)))
        self.assertNotEqual(da.state_key(status()), da.state_key(status(mode="failed-over", up=False, local=False,
                                                                        journal=[LINK_DOWN])))
        record = {"reason": "upgrade", "by": "alice", "since": 1, "drained": False}
        self.assertNotEqual(da.state_key(status(mode="failed-over", up=False, local=False, journal=[LINK_DOWN])),
                            da.state_key(dict(status(mode="maintenance", up=False, local=False, journal=[LINK_DOWN]),
                                              maintenance=record)))


class Plans(unittest.TestCase):
    params = {"deadline": None, "idle_threshold": None, "abort_on_deadline": False, "keep_link_down": False,
              "reason": None, "handoff": None, "fail_back": False}

    def test_drained_runs_drain_on_the_vip_holder(self):
        p = da.plan_drained(status(), dict(self.params, deadline="90s", abort_on_deadline=True))
        self.assertEqual(p.argv, ["drain", "--abort-on-deadline", "--deadline", "90s"])
        self.assertEqual(p.predicted["mode"], "failed-over")
        self.assertFalse(da.holds_vip(p.predicted))
        self.assertIn("mode: failed-over", da.describe(p.predicted))
        self.assertEqual(da.plan_drained(status(), dict(self.params, handoff=True)).argv, ["drain", "--handoff"])
        self.assertEqual(da.plan_drained(status(), dict(self.params, handoff=False)).argv, ["drain", "--no-handoff"])

    def test_drained_is_reached_or_refused_without_running_anything(self):
        for mode in ("failed-over", "handing-off", "maintenance"):
            self.assertTrue(da.plan_drained(status(mode=mode, up=False, local=False, journal=[LINK_DOWN]),
                                            self.params).reached, mode)
        for st, rc, words in [
            (status(local=False), 7, "does not hold the VIP"),
            (status(mode="busy"), 6, "another drain-agent operation"),
            (status(mode="draining"), 6, "another drain-agent operation"),
            (status(mode="diverting", rules=["-A X"]), 7, "state=undrained"),
            (status(mode="returning", local=False), 7, "hand-off"),
        ]:
            p = da.plan_drained(st, self.params)
            self.assertIsNone(p.argv)
            self.assertEqual(p.rc, rc)
            self.assertIn(words, p.error)

    def test_maintenance_on_either_node_records_the_reason(self):
        params = dict(self.params, reason="HAProxy 2.8 upgrade", deadline="2m")
        p = da.plan_maintenance(status(), params)
        self.assertEqual(p.argv, ["maintenance", "on", "--reason", "HAProxy 2.8 upgrade", "--deadline", "2m"])
        self.assertTrue(p.predicted["maintenance"]["drained"], "the VIP holder is drained")
        self.assertEqual(p.predicted["mode"], "maintenance")
        self.assertIn("maintenance: HAProxy 2.8 upgrade", da.describe(p.predicted))
        p = da.plan_maintenance(status(local=False), params)
        self.assertEqual(p.argv[:2], ["maintenance", "on"])
        self.assertFalse(p.predicted["maintenance"]["drained"], "a BACKUP is only kept out of elections")
        self.assertFalse(da.plan_maintenance(status(mode="failed-over", local=False, up=False), params)
                         .predicted["maintenance"]["drained"])
        self.assertTrue(da.plan_maintenance(status(mode="maintenance", local=False, up=False), params).reached)
        self.assertEqual(da.plan_maintenance(status(mode="busy"), params).rc, 6)

    def test_undrained(self):
        self.assertTrue(da.plan_undrained(status(mode="serving", local=False), self.params).reached)
        p = da.plan_undrained(status(mode="failed-over", up=False, local=False, journal=[LINK_DOWN]), self.params)
        self.assertEqual(p.argv, ["undrain"])
        self.assertEqual(da.effective_mode(p.predicted), "serving")
        p = da.plan_undrained(status(mode="failed-over", journal=[TRACK_FAULT]), dict(self.params, keep_link_down=True))
        self.assertEqual(p.argv, ["undrain", "--keep-link-down"])
        p = da.plan_undrained(status(mode="diverting", rules=["-A X"]), self.params)
        self.assertEqual(p.argv, ["undrain"])
        p = da.plan_undrained(status(mode="maintenance", up=False, local=False, journal=[LINK_DOWN]), self.params)
        self.assertEqual(p.argv, ["maintenance", "off"])
        self.assertIsNone(p.predicted["maintenance"])
        p = da.plan_undrained(status(mode="maintenance", up=False, local=False, journal=[LINK_DOWN]),
                              dict(self.params, fail_back=True))
        self.assertEqual(p.argv, ["maintenance", "off", "--failback"])
        self.assertTrue(da.holds_vip(p.predicted))
        self.assertTrue(da.plan_undrained(status(mode="serving"), dict(self.params, fail_back=True)).reached,
                        "a serving node that holds the VIP has nothing to fail back")
        self.assertEqual(da.plan_undrained(status(mode="serving", local=False), dict(self.params, fail_back=True))
                         .argv, ["maintenance", "off", "--failback"])
        self.assertEqual(da.plan_undrained(status(mode="busy"), self.params).rc, 6)

    def test_every_state_but_status_has_a_planner(self):
        self.assertEqual(sorted(da.PLANNERS), ["drained", "maintenance", "undrained"])


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
