#!/usr/bin/env python3
"""A Mesos framework written the way pymesos' users write one, run against `strata local`'s
Mesos scheduler HTTP API by cli/tests/mesos_pymesos.rs. pymesos (0.3.15, from PyPI, not
patched) is the client library; this script only uses its public driver and Scheduler API.

Usage: pymesos_framework.py HOST:PORT

Phases, each bounded by STEP seconds; every check that fails exits non-zero with a message:
  1. launch TASKS command tasks (`echo`) and see each reach TASK_FINISHED (updates with a
     uuid are acknowledged by the driver, as pymesos does by default);
  2. decline every offer with a one-hour filter, see no offer for a while, REVIVE, and see
     an offer again;
  3. launch a long task, see TASK_RUNNING, reconcile implicitly (its state comes back with
     REASON_RECONCILIATION and no uuid), reconcile explicitly (a finished task and an unknown
     one, TASK_LOST), then kill it and see TASK_KILLED;
  4. stop the driver, which tears the framework down.
Prints one `ok: ...` line per phase.

With STRATA_TLS_CA (the cluster's CA certificate) the Mesos API is HTTPS: the script first
checks that SUBSCRIBE without credentials is answered 401 over TLS, then runs pymesos, which
has no TLS of its own, through a forwarder in this process that speaks TLS to the allocator
(verifying its certificate with the CA), as a TLS-terminating sidecar would.
"""

import asyncio
import getpass
import http.client
import json
import logging
import os
import queue
import ssl
import sys
import threading
import time

from pymesos import MesosSchedulerDriver, Scheduler

TASKS = int(os.environ.get("TASKS", "50"))
STEP = float(os.environ.get("STEP", "60"))
CPUS = 0.1
MEM = 16.0


def fail(message):
    print("FAILED: " + message, flush=True)
    sys.exit(1)


class Recorder(Scheduler):
    """Hands every callback to the main thread through a queue."""

    def __init__(self):
        self.events = queue.Queue()

    def registered(self, driver, framework_id, master_info):
        self.events.put(("registered", framework_id["value"]))

    def reregistered(self, driver, master_info):
        self.events.put(("reregistered", None))

    def resourceOffers(self, driver, offers):
        self.events.put(("offers", offers))

    def offerRescinded(self, driver, offer_id):
        self.events.put(("rescinded", offer_id))

    def statusUpdate(self, driver, update):
        self.events.put(("update", update))

    def error(self, driver, message):
        self.events.put(("error", message))


def scalar(offer, name):
    return sum(
        r.get("scalar", {}).get("value", 0.0)
        for r in offer.get("resources", [])
        if r["name"] == name
    )


def task(offer, task_id, command):
    allocation = offer.get("allocation_info")
    resources = []
    for name, value in (("cpus", CPUS), ("mem", MEM)):
        r = {"name": name, "type": "SCALAR", "scalar": {"value": value}}
        if allocation:
            r["allocation_info"] = allocation
        resources.append(r)
    return {
        "task_id": {"value": task_id},
        "agent_id": offer["agent_id"],
        "name": task_id,
        "resources": resources,
        "command": {"shell": True, "value": command},
    }


class Run:
    def __init__(self, master):
        self.sched = Recorder()
        framework = {
            "user": getpass.getuser(),
            "name": "pymesos-on-strata",
            "failover_timeout": 60.0,
            "capabilities": [{"type": "MULTI_ROLE"}],
            "roles": ["*"],
        }
        # HTTP Basic, as Mesos frameworks authenticate: the principal and its token.
        principal = os.environ.get("STRATA_PRINCIPAL")
        secret = os.environ.get("STRATA_SECRET")
        self.driver = MesosSchedulerDriver(
            self.sched, framework, master, principal=principal, secret=secret
        )
        self.states = {}
        self.updates = []

    def next_event(self, deadline, what):
        left = deadline - time.time()
        if left <= 0:
            fail("timed out waiting for " + what)
        try:
            kind, value = self.sched.events.get(timeout=left)
        except queue.Empty:
            fail("timed out waiting for " + what)
        if kind == "error":
            fail("the allocator sent ERROR: %s" % value)
        if kind == "update":
            status = value
            self.states[status["task_id"]["value"]] = status["state"]
            self.updates.append(status)
        return kind, value

    def decline(self, offers, seconds):
        self.driver.declineOffer(
            [o["id"] for o in offers], filters={"refuse_seconds": seconds}
        )

    def main(self):
        self.driver.start()
        deadline = time.time() + STEP
        while True:
            kind, value = self.next_event(deadline, "SUBSCRIBED")
            if kind == "registered":
                break
        print("ok: subscribed as %s" % value, flush=True)
        self.launch_many()
        self.decline_and_revive()
        self.reconcile_and_kill()
        self.driver.stop()
        self.driver.join()
        print("ok: stopped", flush=True)

    def launch_many(self):
        pending = ["task-%d" % i for i in range(TASKS)]
        finished = set()
        deadline = time.time() + STEP * 2
        while len(finished) < TASKS:
            kind, value = self.next_event(deadline, "%d tasks to finish" % TASKS)
            if kind == "offers":
                for offer in value:
                    cpus, mem = scalar(offer, "cpus"), scalar(offer, "mem")
                    batch = []
                    while pending and cpus >= CPUS - 1e-9 and mem >= MEM:
                        tid = pending.pop(0)
                        batch.append(task(offer, tid, "echo hello from " + tid))
                        cpus -= CPUS
                        mem -= MEM
                    if batch:
                        self.driver.launchTasks(
                            offer["id"], batch, filters={"refuse_seconds": 0.2}
                        )
                    else:
                        self.decline([offer], 0.2)
            elif kind == "update":
                tid, state = value["task_id"]["value"], value["state"]
                if state == "TASK_FINISHED":
                    if "uuid" not in value:
                        fail("TASK_FINISHED of %s carries no uuid to acknowledge" % tid)
                    finished.add(tid)
                elif state not in ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"):
                    fail("task %s ended %s: %s" % (tid, state, value.get("message")))
        print("ok: %d tasks finished" % TASKS, flush=True)

    def decline_and_revive(self):
        deadline = time.time() + STEP
        while True:
            kind, value = self.next_event(deadline, "an offer to decline")
            if kind == "offers":
                self.decline(value, 3600)
                break
        # Resources freed by the last tasks may still come in later offers: decline those too,
        # until no offer comes for longer than the allocator's default filter (5 s), which
        # only the one-hour filter explains. As in Mesos, a filter covers the resources of the
        # offer it was made for: once declined offers are recovered, their union is offered
        # once more (it is in no single filter), so a few more declines are expected when the
        # tasks' resources came back in many pieces (slower calls, as through TLS, split them
        # more).
        quiet = 6.5
        declines = 1
        deadline = time.time() + STEP
        quiet_until = time.time() + quiet
        while time.time() < quiet_until:
            try:
                kind, value = self.sched.events.get(timeout=quiet_until - time.time())
            except queue.Empty:
                break
            if kind == "offers":
                declines += 1
                if declines > 20 or time.time() > deadline:
                    fail("offered %s although every offer was declined for an hour"
                         % [o["id"]["value"] for o in value])
                self.decline(value, 3600)
                quiet_until = time.time() + quiet
        print("ok: declined with a one-hour filter (%d offers) and no offer came for %.1fs"
              % (declines, quiet), flush=True)
        revived_at = time.time()
        self.driver.reviveOffers()
        deadline = time.time() + STEP
        while True:
            kind, value = self.next_event(deadline, "an offer after REVIVE")
            if kind == "offers":
                self.offers = value
                break
        print("ok: offered again %.2fs after REVIVE" % (time.time() - revived_at), flush=True)

    def reconcile_and_kill(self):
        offer = self.offers[0]
        self.driver.launchTasks(
            offer["id"], [task(offer, "victim", "sleep 600")], filters={"refuse_seconds": 3600}
        )
        if len(self.offers) > 1:
            self.decline(self.offers[1:], 3600)
        deadline = time.time() + STEP
        while self.states.get("victim") != "TASK_RUNNING":
            kind, value = self.next_event(deadline, "the long task to run")
            if kind == "offers":
                self.decline(value, 3600)
            if kind == "update" and value["task_id"]["value"] == "victim":
                if value["state"] not in ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"):
                    fail("the long task ended %s: %s" % (value["state"], value.get("message")))
        print("ok: long task running", flush=True)

        # Implicit reconciliation: every task the allocator knows of this framework.
        self.driver.reconcileTasks([])
        got = self.wait_reconciled(["victim"])
        if got["victim"]["state"] != "TASK_RUNNING":
            fail("implicit reconciliation said %s for the running task" % got["victim"])
        print("ok: implicit reconciliation", flush=True)

        # Explicit reconciliation: a finished task and one that never existed.
        self.driver.reconcileTasks(
            [{"task_id": {"value": "task-0"}}, {"task_id": {"value": "no-such-task"}}]
        )
        got = self.wait_reconciled(["task-0", "no-such-task"])
        if got["task-0"]["state"] != "TASK_FINISHED":
            fail("explicit reconciliation said %s for a finished task" % got["task-0"])
        if got["no-such-task"]["state"] != "TASK_LOST":
            fail("explicit reconciliation said %s for an unknown task" % got["no-such-task"])
        print("ok: explicit reconciliation", flush=True)

        self.driver.killTask({"value": "victim"})
        deadline = time.time() + STEP
        while self.states.get("victim") != "TASK_KILLED":
            kind, value = self.next_event(deadline, "the killed task to be TASK_KILLED")
            if kind == "offers":
                self.decline(value, 3600)
            if kind == "update" and value["task_id"]["value"] == "victim":
                if value["state"] not in ("TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"):
                    fail("the killed task ended %s" % value["state"])
        print("ok: killed", flush=True)

    def wait_reconciled(self, task_ids):
        got = {}
        deadline = time.time() + STEP
        while len(got) < len(task_ids):
            kind, value = self.next_event(deadline, "reconciliation of %s" % task_ids)
            if kind == "offers":
                self.decline(value, 3600)
            if kind == "update" and value.get("reason") == "REASON_RECONCILIATION":
                tid = value["task_id"]["value"]
                if "uuid" in value:
                    fail("reconciliation update for %s carries a uuid" % tid)
                if tid in task_ids:
                    got[tid] = value
        return got


def tls_context(ca):
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = True
    return context


def check_refused_without_credentials(master, context):
    """SUBSCRIBE over TLS with no Authorization header: 401 and what to send."""
    host, port = master.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=STEP)
    body = json.dumps(
        {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "nobody", "name": "x"}}}
    )
    conn.request(
        "POST", "/api/v1/scheduler", body=body, headers={"Content-Type": "application/json"}
    )
    answer = conn.getresponse()
    text = answer.read().decode("utf-8", "replace")
    if answer.status != 401 or "HTTP Basic" not in text:
        fail("SUBSCRIBE without credentials got %d: %s" % (answer.status, text))
    print("ok: refused without credentials over TLS", flush=True)


async def pump(reader, writer, what):
    """Copies `reader` to `writer` until end of stream, then passes the end on: a half-close
    where the writer can (plain TCP), a close where it cannot (TLS has no half-close that
    servers honour). Failures are printed, not swallowed, so a hang says why."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        print("tls forwarder: %s ended: %r" % (what, e), file=sys.stderr, flush=True)
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
        except OSError:
            writer.close()


def tls_forwarder(master, context):
    """Listens on a loopback port; each connection is forwarded to `master` over TLS.
    Returns the plain HOST:PORT pymesos should use.

    asyncio drives OpenSSL through memory buffers, so reading and writing one TLS connection
    never wait on each other. (A select loop over a blocking SSL socket did: a TLS 1.3 session
    ticket made the socket readable, recv then waited for application data while pymesos'
    request sat unread on the other side, and the call hung until the timeout.)"""
    host, port = master.rsplit(":", 1)
    ready = queue.Queue()

    async def handle(plain_reader, plain_writer):
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=context, server_hostname=host),
                STEP,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            print("tls forwarder: cannot reach %s: %r" % (master, e), file=sys.stderr, flush=True)
            plain_writer.close()
            return
        await asyncio.gather(
            pump(plain_reader, up_writer, "request side"),
            pump(up_reader, plain_writer, "response side"),
        )
        for writer in (up_writer, plain_writer):
            writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    return "127.0.0.1:%d" % ready.get(timeout=STEP)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if len(sys.argv) != 2:
        fail("usage: pymesos_framework.py HOST:PORT")
    master = sys.argv[1]
    ca = os.environ.get("STRATA_TLS_CA")
    if ca:
        context = tls_context(ca)
        check_refused_without_credentials(master, context)
        master = tls_forwarder(master, context)
    Run(master).main()
