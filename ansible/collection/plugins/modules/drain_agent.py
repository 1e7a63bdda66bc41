#!/usr/bin/python

# Copyright (c) 2026, the drain-agent developers
# MIT License or Apache License 2.0, at your option, like the rest of drain-agent (see the
# repository's Cargo.toml): https://opensource.org/licenses/MIT, https://www.apache.org/licenses/LICENSE-2.0
# SPDX-License-Identifier: MIT OR Apache-2.0

# drain-agent's Ansible module: wraps the CLI's `--json` output and exit codes.

DOCUMENTATION = r"""
---
module: drain_agent
short_description: Take a keepalived/HAProxy node out of service and back with drain-agent
description:
  - Wraps the C(drain-agent) command line of the node it runs on. Every call first reads
    C(drain-agent status --json); RV(ignore:changed) is computed from that state and the state
    read again afterwards, never assumed.
  - O(state=drained) runs C(drain-agent drain --json) on the node that holds the VIP(s). New
    connections go to the peer at once, the node's own connections end here, keepalived moves the
    VIP(s), and every rule is removed. The node stays out of service until O(state=undrained).
  - O(state=maintenance) runs C(drain-agent maintenance on --reason REASON --json). The node that
    holds the VIP(s) is drained as for O(state=drained); a node that holds none (the pair's BACKUP)
    is kept out of elections instead (it stops accepting its peer's drains and keepalived holds it
    in FAULT). Who, when and why are recorded on the node and shown by C(drain-agent status).
  - O(state=undrained) brings the node back as BACKUP, with C(drain-agent maintenance off --json)
    for a node in maintenance, else C(drain-agent undrain --json), which removes whatever a drain
    left and brings the tracked interface (or keepalived's track file) back. With
    O(fail_back=true) it then asks the peer's agent to give the VIP(s) back
    (C(maintenance off --failback); needs the peer link, the agent's C(handoff) section).
  - O(state=status) only reads the state.
  - Exit codes 2 to 7 of the agent mean that nothing was changed on the node; the module says so
    in RV(ignore:msg) and returns RV(ignore:changed=false). Codes 8, 9 and 10 mean the drain was
    rolled back and the node still serves.
version_added: "0.1.0"
author:
  - drain-agent developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is run that changes the node. For O(state=drained), and O(state=maintenance) on
        the node holding the VIP, the module runs C(drain-agent check --json) (read-only; it
        probes the peer with one SYN) and fails when the drain would fail before changing
        anything.
  diff_mode:
    support: full
    details:
      - The diff shows the node's mode, the VIPs it holds, the tracked interface and the
        maintenance record, before and after (predicted in check mode).
  platform:
    platforms: posix
options:
  state:
    description:
      - V(drained) takes the node out of service (it must hold the VIP, or be out of service already).
      - V(maintenance) takes it out of service for a O(reason) and records it; works on either node of the pair.
      - V(undrained) brings it back in service (ending its maintenance, if any).
      - V(status) reads the state and changes nothing.
    type: str
    required: true
    choices: [drained, maintenance, undrained, status]
  reason:
    description: For O(state=maintenance), why the node goes out of service (required with it).
    type: str
  handoff:
    description:
      - For O(state=drained) and O(state=maintenance), V(true) hands off (C(--handoff)),
        V(false) drains (C(--no-handoff)); omitted, the agent's C(drain.mode).
    type: bool
  fail_back:
    description:
      - For O(state=undrained), then move the VIP(s) back to this node through the peer's agent
        (C(--failback)).
    type: bool
    default: false
  binary:
    description: Path of the drain-agent binary on the node.
    type: path
    default: /usr/local/sbin/drain-agent
  config:
    description: The agent's configuration file on the node (C(-c)).
    type: path
    default: /etc/drain-agent/drain-agent.yaml
  socket:
    description:
      - The daemon's control socket (C(--socket)). When a daemon serves it, C(drain),
        C(undrain) and C(status) go through the daemon; otherwise they run in the module's
        process. Omitted, the agent's default (C(/run/drain-agent/control.sock)).
    type: path
  local:
    description: Run the operation in the module's process even if a daemon serves the socket (C(--local)).
    type: bool
    default: false
  deadline:
    description:
      - For O(state=drained) and O(state=maintenance), overrides C(drain.deadline), for example
        V(90s) or V(5m).
    type: str
  idle_threshold:
    description: For O(state=drained) and O(state=maintenance), overrides C(drain.idle_threshold).
    type: str
  abort_on_deadline:
    description:
      - For O(state=drained) and O(state=maintenance), roll back instead of failing over when the
        deadline is reached (exit 10).
    type: bool
    default: false
  keep_link_down:
    description:
      - For O(state=undrained), remove what a drain left but keep the tracked interface down
        (C(--keep-link-down)).
    type: bool
    default: false
notes:
  - A drain runs in the foreground until the node is out of service, up to the configured
    deadline (5 minutes by default) plus the failover.
requirements:
  - drain-agent on the node (the P(drain_agent.drain_agent.drain_agent#role) role installs it)
"""

EXAMPLES = r"""
- name: Read the node's state
  drain_agent.drain_agent.drain_agent:
    state: status
  register: lb

- name: Take the node holding the VIP out of service
  drain_agent.drain_agent.drain_agent:
    state: drained
    deadline: 2m
  when: lb.holds_vip

- name: Maintenance of either node, recorded with its reason
  drain_agent.drain_agent.drain_agent:
    state: maintenance
    reason: "HAProxy upgrade, CHG-4711"

- name: Bring it back (it returns as BACKUP)
  drain_agent.drain_agent.drain_agent:
    state: undrained

- name: Per-node paths, as on hosts running several agents
  drain_agent.drain_agent.drain_agent:
    state: status
    binary: /opt/lb1/sbin/drain-agent
    config: /opt/lb1/etc/drain-agent.yaml
    socket: /opt/lb1/run/control.sock
"""

RETURN = r"""
mode:
  description: >-
    The node's mode after the call, as C(drain-agent status) says it: serving, draining, busy,
    handing-off, returning, diverting, failed-over or maintenance.
  returned: always
  type: str
  sample: failed-over
out_of_service:
  description: Whether the node is out of service after the call (failed-over, handing-off or maintenance).
  returned: always
  type: bool
maintenance:
  description: The node's maintenance record after the call (reason, by, since, drained), or null.
  returned: always
  type: dict
holds_vip:
  description: Whether the node holds at least one of its VIPs after the call.
  returned: always
  type: bool
  sample: false
accepting:
  description: Whether the node accepts diverted traffic for its peer (its accept journal is not empty).
  returned: always
  type: bool
before:
  description: C(drain-agent status --json) before the call.
  returned: always
  type: dict
status:
  description: C(drain-agent status --json) after the call (the same as RV(before) in check mode).
  returned: always
  type: dict
result:
  description: >-
    The agent's result document (V(drained), V(maintenance-on), V(maintenance-off), V(undrained)
    or V(failed)), with a C(summary) when a daemon ran it.
  returned: when the agent was run
  type: dict
  sample: {"result": "drained", "report": {"reason": "empty", "drain_ms": 3012.5, "failover_ms": 612.0}}
report:
  description: >-
    For a drain (O(state=drained), or O(state=maintenance) on the node holding the VIP), its
    report: reason (V(empty), V(only-idle), V(deadline)), drain_ms, failover_ms, total_ms,
    install_ms, abandoned (idle connections left), diverted_flows, recorded_flows,
    unrecorded_syns, sealed_drops.
  returned: when a drain succeeded
  type: dict
sockets_left:
  description: Connections still open on the node when the drain ended (idle ones it abandoned).
  returned: when a drain succeeded
  type: int
failover_ms:
  description: Milliseconds from the failover trigger until the peer owned the VIP.
  returned: when a drain succeeded
  type: float
events:
  description: The agent's events, without the periodic progress events (the last one is kept).
  returned: when the agent was run
  type: list
  elements: dict
rc:
  description: The agent's exit code.
  returned: when the agent was run
  type: int
nothing_changed:
  description: True when the agent's exit code says it changed nothing (2 to 7).
  returned: on failure
  type: bool
cmd:
  description: The command line that was run.
  returned: when the agent was run
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

# The agent's exit codes (README "Commands and exit codes"): what each means for the node.
EXIT_MEANINGS = {
    1: "internal error; rolled back",
    2: "bad command-line usage; nothing was changed",
    3: "invalid configuration; nothing was changed",
    4: "environment not usable; nothing was changed",
    5: "the peer cannot take the traffic; nothing was changed",
    6: "another drain-agent operation holds the lock; nothing was changed",
    7: "the node's state does not allow it; nothing was changed",
    8: "the peer was lost during the drain; rolled back, the node serves",
    9: "interrupted; rolled back, the node serves",
    10: "deadline reached with --abort-on-deadline; rolled back, the node serves",
    11: "failover not confirmed in time; divert removed, tracked interface left down: check keepalived",
    12: "cleanup incomplete; `drain-agent undrain` retries",
    13: "the VIP moved to the peer during the drain without the agent; the node's remaining connections were cut, it is out of service: check keepalived",
}

# Exit codes after which the agent guarantees the node is as it was. Both tables are held to the
# agent's own (src/ops/exit.rs) by tests/exit_codes.rs.
UNCHANGED_CODES = frozenset([2, 3, 4, 5, 6, 7])

# `drain-agent status` modes (README "JSON output"). Out of service: the node holds no VIP and
# keepalived cannot elect it until it is brought back.
OUT_OF_SERVICE = frozenset(["failed-over", "handing-off", "maintenance"])
# An operation holds the node's lock.
RUNNING = frozenset(["draining", "busy"])


def parse_json_lines(text):
    """The JSON objects of the agent's stdout, one per line; other lines are skipped."""
    docs = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


def final_document(docs):
    """The last document that is not an event: the command's result (or `status`' document)."""
    for doc in reversed(docs):
        if "event" not in doc:
            return doc
    return None


def effective_mode(status):
    return status.get("mode", "unknown")


def holds_vip(status):
    return any(v.get("local") for v in status.get("vips") or [])


def accepting(status):
    return bool(status.get("accept_journal"))


def journal_changes(entries):
    """A journal's changes without when and by whom they were recorded."""
    return tuple(
        json.dumps(dict((k, v) for k, v in e.items() if k not in ("at", "pid")), sort_keys=True)
        for e in entries or []
        if isinstance(e, dict)
    )


def state_key(status):
    """What `changed` compares: everything the agent can change on the node."""
    return (
        effective_mode(status),
        (status.get("tracked_interface") or {}).get("up"),
        tuple(sorted(v.get("address", "") for v in status.get("vips") or [] if v.get("local"))),
        tuple(status.get("divert_rules") or []),
        tuple(status.get("divert_sets") or []),
        journal_changes(status.get("drain_journal")),
        journal_changes(status.get("accept_journal")),
        journal_changes(status.get("return_journal")),
        json.dumps(status.get("maintenance"), sort_keys=True),
    )


def describe(status):
    """The diff's text: the node's mode and what it holds."""
    held = [v.get("address") for v in status.get("vips") or [] if v.get("local")]
    tracked = status.get("tracked_interface") or {}
    lines = [
        "mode: %s" % effective_mode(status),
        "holds VIP: %s" % (", ".join(held) if held else "none"),
    ]
    if tracked:
        lines.append("tracked interface %s: %s" % (tracked.get("name"), "up" if tracked.get("up") else "down"))
    lines.append("accepting for the peer: %s" % ("yes" if accepting(status) else "no"))
    m = status.get("maintenance")
    if m:
        lines.append("maintenance: %s (by %s)" % (m.get("reason"), m.get("by")))
    return "\n".join(lines) + "\n"


class Plan:
    """What one call does: nothing (`reached`), run `argv`, or fail with `error` and `rc`."""

    def __init__(self, reached=False, argv=None, predicted=None, error=None, rc=None):
        self.reached = reached
        self.argv = argv
        self.predicted = predicted
        self.error = error
        self.rc = rc


def refuse_running_or_stale(status):
    """The states in which no call may act: an operation running, or a divert no drain owns."""
    mode = effective_mode(status)
    if mode in RUNNING:
        return Plan(error="another drain-agent operation is running (pid %s)" % status.get("lock_holder_pid"), rc=6)
    if mode == "diverting":
        return Plan(error="a divert is in place that no drain finished: run state=undrained first", rc=7)
    if mode == "returning":
        return Plan(error="this node is returning its peer's connections (the peer's hand-off); wait until it ends",
                    rc=7)
    return None


def drain_args(params):
    argv = []
    if params.get("handoff") is True:
        argv.append("--handoff")
    elif params.get("handoff") is False:
        argv.append("--no-handoff")
    if params.get("abort_on_deadline"):
        argv.append("--abort-on-deadline")
    if params.get("deadline"):
        argv += ["--deadline", params["deadline"]]
    if params.get("idle_threshold"):
        argv += ["--idle-threshold", params["idle_threshold"]]
    return argv


def out_of_service(status):
    return effective_mode(status) in OUT_OF_SERVICE


def plan_drained(status, params):
    if out_of_service(status):
        return Plan(reached=True)
    refused = refuse_running_or_stale(status)
    if refused:
        return refused
    if not holds_vip(status):
        return Plan(error="this node does not hold the VIP: there is nothing to drain here (drain the node that holds it)",
                    rc=7)
    predicted = dict(status, mode="failed-over",
                     vips=[dict(v, local=False) for v in status.get("vips") or []])
    return Plan(argv=["drain"] + drain_args(params), predicted=predicted)


def plan_maintenance(status, params):
    if effective_mode(status) == "maintenance":
        return Plan(reached=True)
    refused = refuse_running_or_stale(status)
    if refused:
        return refused
    record = dict(reason=params["reason"], by="ansible", since=None,
                  drained=holds_vip(status) and not out_of_service(status))
    predicted = dict(status, mode="maintenance", maintenance=record,
                     vips=[dict(v, local=False) for v in status.get("vips") or []])
    return Plan(argv=["maintenance", "on", "--reason", params["reason"]] + drain_args(params),
                predicted=predicted)


def plan_undrained(status, params):
    mode = effective_mode(status)
    clean = (
        mode == "serving"
        and not status.get("divert_rules")
        and not status.get("divert_sets")
        and not status.get("drain_journal")
    )
    if clean and not params.get("fail_back"):
        return Plan(reached=True)
    if clean and holds_vip(status):
        return Plan(reached=True)
    refused = refuse_running_or_stale(status) if mode != "diverting" else None
    if refused:
        return refused
    if params.get("fail_back"):
        argv = ["maintenance", "off", "--failback"]
    elif mode == "maintenance":
        argv = ["maintenance", "off"] + (["--keep-link-down"] if params.get("keep_link_down") else [])
    else:
        argv = ["undrain"] + (["--keep-link-down"] if params.get("keep_link_down") else [])
    down = bool(params.get("keep_link_down"))
    vips = status.get("vips") or []
    if params.get("fail_back"):
        vips = [dict(v, local=True) for v in vips]
    predicted = dict(status, mode="failed-over" if down else "serving", maintenance=None,
                     divert_rules=[], divert_sets=[], divert=None, vips=vips,
                     drain_journal=[], tracked_interface=dict(status.get("tracked_interface") or {},
                                                              up=not down))
    return Plan(argv=argv, predicted=predicted)


# One entry per `state`: the status it has reached, the CLI arguments that reach it, the status
# it predicts.
PLANNERS = {
    "drained": plan_drained,
    "maintenance": plan_maintenance,
    "undrained": plan_undrained,
}


def failure_message(error, rc):
    meaning = EXIT_MEANINGS.get(rc, "unknown exit code")
    error = (error or "").strip() or "drain-agent failed without a message"
    return "%s (exit %d: %s)" % (error, rc, meaning)


def error_of(docs, stderr):
    """The agent's one-line error: the `failed` document's, else stderr's last line."""
    doc = final_document(docs)
    if doc and doc.get("result") == "failed" and doc.get("error"):
        return doc["error"]
    lines = [l.strip() for l in (stderr or "").splitlines() if l.strip()]
    if lines:
        last = lines[-1]
        prefix = "drain-agent: error: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return ""


def check_error(docs):
    """`check --json`'s first failing row as (exit code, one line), or None when it passed."""
    doc = final_document(docs)
    if doc is None:
        return (1, "drain-agent check printed no report")
    if doc.get("ok"):
        return None
    for row in doc.get("checks") or []:
        if not row.get("ok"):
            return (row.get("exit_code") or 1, "check %s: %s" % (row.get("check"), row.get("detail")))
    return (1, "drain-agent check failed")


def summarise_events(docs):
    """Events without the periodic `progress` ones, except the last."""
    events = [d for d in docs if "event" in d]
    progress = [e for e in events if e.get("event") == "progress"]
    kept = [e for e in events if e.get("event") != "progress"]
    if progress:
        kept.append(progress[-1])
        kept.sort(key=lambda e: e.get("ts_ms", 0))
    return kept


class Agent:
    """Runs the agent with the module's global options."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.base = [p["binary"], "-c", p["config"], "--json"]
        if p.get("socket"):
            self.base += ["--socket", p["socket"]]
        if p.get("local"):
            self.base.append("--local")

    def run(self, args):
        argv = self.base + list(args)
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C"})
        return argv, rc, parse_json_lines(out), err

    def status(self):
        argv, rc, docs, err = self.run(["status"])
        doc = final_document(docs)
        if rc != 0 or doc is None or "mode" not in doc:
            self.module.fail_json(
                msg="drain-agent status failed: " + failure_message(error_of(docs, err), rc),
                rc=rc, cmd=argv, nothing_changed=True, changed=False)
        return doc


def result_fields(status):
    return dict(mode=effective_mode(status), holds_vip=holds_vip(status),
                accepting=accepting(status), out_of_service=out_of_service(status),
                maintenance=status.get("maintenance"), status=status)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["drained", "maintenance", "undrained", "status"]),
            reason=dict(type="str"),
            handoff=dict(type="bool"),
            fail_back=dict(type="bool", default=False),
            binary=dict(type="path", default="/usr/local/sbin/drain-agent"),
            config=dict(type="path", default="/etc/drain-agent/drain-agent.yaml"),
            socket=dict(type="path"),
            local=dict(type="bool", default=False),
            deadline=dict(type="str"),
            idle_threshold=dict(type="str"),
            abort_on_deadline=dict(type="bool", default=False),
            keep_link_down=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
        required_if=[("state", "maintenance", ("reason",))],
        mutually_exclusive=[("fail_back", "keep_link_down")],
    )
    p = module.params
    if not (os.path.isfile(p["binary"]) and os.access(p["binary"], os.X_OK)):
        module.fail_json(msg="drain-agent binary not found or not executable at %s (the drain_agent.drain_agent.drain_agent role installs it)"
                             % p["binary"], changed=False)
    if not os.path.isfile(p["config"]):
        module.fail_json(msg="drain-agent configuration %s does not exist (the drain_agent.drain_agent.drain_agent role renders it)"
                             % p["config"], changed=False)
    if p["state"] == "maintenance" and not p["reason"].strip():
        module.fail_json(msg="reason must say why the node goes out of service, not be empty", changed=False)
    for key in ("deadline", "idle_threshold"):
        if p.get(key) is not None and not p[key].strip():
            module.fail_json(msg="%s must be a duration such as 90s or 5m, not an empty string" % key, changed=False)

    agent = Agent(module)
    before = agent.status()
    if p["state"] == "status":
        module.exit_json(changed=False, before=before, **result_fields(before))

    plan = PLANNERS[p["state"]](before, p)
    if plan.reached:
        module.exit_json(changed=False, before=before, diff=dict(before=describe(before), after=describe(before)),
                         **result_fields(before))
    if plan.error:
        module.fail_json(msg=failure_message(plan.error, plan.rc), rc=plan.rc, nothing_changed=True,
                         changed=False, before=before, **result_fields(before))

    if module.check_mode:
        if p["state"] == "drained" or (p["state"] == "maintenance" and plan.predicted["maintenance"]["drained"]):
            cmd, _rc, docs, _err = agent.run(["check"])
            failed = check_error(docs)
            if failed:
                module.fail_json(msg="check mode: the drain would fail: " + failure_message(failed[1], failed[0]),
                                 rc=failed[0], nothing_changed=True, changed=False, cmd=cmd, before=before,
                                 **result_fields(before))
        module.exit_json(changed=True, before=before,
                         diff=dict(before=describe(before), after=describe(plan.predicted)),
                         **result_fields(before))

    cmd, rc, docs, err = agent.run(plan.argv)
    after = agent.status()
    changed = state_key(before) != state_key(after)
    out = dict(changed=changed, before=before, rc=rc, cmd=cmd, result=final_document(docs),
               events=summarise_events(docs), diff=dict(before=describe(before), after=describe(after)))
    out.update(result_fields(after))
    if rc != 0:
        out["nothing_changed"] = rc in UNCHANGED_CODES
        module.fail_json(msg=failure_message(error_of(docs, err), rc), **out)
    # `drain` puts its report under `report`, `maintenance on` under `drain` (null: nothing drained).
    report = (out["result"] or {}).get("report") or (out["result"] or {}).get("drain")
    if report is not None:
        out["report"] = report
        out["sockets_left"] = report.get("abandoned")
        out["failover_ms"] = report.get("failover_ms")
    module.exit_json(**out)


if __name__ == "__main__":
    main()
