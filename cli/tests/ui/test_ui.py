#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright for
Python, against a real `strata local` (started by cli/tests/it/ui_browser.rs, which passes
its addresses in the environment).

Loads each page, launches a task through the CLI and sees it on the tasks page within 2 s
of the allocator knowing it, follows its output, records a CPU profile and sees the flame
graph's SVG, kills the task from the page and sees TASK_KILLED, drains and reactivates the
agent; deploys an app (strata-services) and adds a job (strata-jobs) with the CLI and sees
both on the "Apps & jobs" page within 2 s, then scales the app and sees its count change;
saves a screenshot of each page. Prints one JSON line of figures at the end, and exits
non-zero with a message at the first thing that does not hold.

Environment: STRATA_UI_URL (http://HOST:PORT of the Mesos HTTP API), STRATA_ALLOCATOR
(the gRPC address for the CLI), STRATA_SERVICES and STRATA_JOBS (the frameworks' control
APIs, host:port), STRATA_BIN (the strata CLI), STRATA_UI_SCREENSHOTS (a directory),
STRATA_CHROMIUM (default /usr/bin/chromium).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

URL = os.environ["STRATA_UI_URL"].rstrip("/")
STRATA = os.environ["STRATA_BIN"]
ALLOCATOR = os.environ["STRATA_ALLOCATOR"]
SERVICES = os.environ["STRATA_SERVICES"]
JOBS = os.environ["STRATA_JOBS"]
SHOTS = pathlib.Path(os.environ["STRATA_UI_SCREENSHOTS"])
CHROMIUM = os.environ.get("STRATA_CHROMIUM", "/usr/bin/chromium")
# This machine's network is closed: nothing in the browser may try to reach out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TASK_ID = "ui-busy"
# Busy (for the profile), with a line of output now and then (for the log).
SCRIPT = (
    "i=0; while true; do i=$((i+1)); "
    "if [ $((i % 5000)) = 0 ]; then echo tick $i; fi; done"
)

APP_ID = "ui-web"
APP = f"""id = "{APP_ID}"
command = "sleep 3600"
instances = 1
cpus = 0.1
mem = 32
"""
JOB_ID = "ui-nightly"
JOB = f"""id = "{JOB_ID}"
command = "true"
[schedule]
cron = "0 3 * * *"
"""

figures = {}


def fail(message):
    print(f"test_ui: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api_knows_task():
    with urllib.request.urlopen(f"{URL}/master/tasks?limit=1000", timeout=5) as r:
        tasks = json.load(r)["tasks"]
    return any(t["id"] == TASK_ID for t in tasks)


def cli(args):
    out = subprocess.run([STRATA, *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        fail(f"strata {' '.join(args)}: {out.stderr.strip()}")


def definition(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


def wait(what, condition, seconds, every=0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    fail(f"{what} did not happen within {seconds} s")


def main():
    task = None
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())

        # Overview: live, with the one agent of `strata local`.
        t0 = time.monotonic()
        page.goto(f"{URL}/ui/")
        page.wait_for_selector("#conn.live", timeout=10_000)
        figures["overview_live_s"] = round(time.monotonic() - t0, 3)
        wait("the overview counting the agent",
             lambda: page.inner_text("#n-agents") == "1", 5)
        page.wait_for_selector("#resources td")
        shot(page, "overview")

        page.goto(f"{URL}/ui/#/agents")
        page.wait_for_selector("#agents tr[data-agent-row]")
        shot(page, "agents")
        page.goto(f"{URL}/ui/#/frameworks")
        page.wait_for_selector("#roles")
        shot(page, "frameworks")

        # A task launched through the CLI shows on the tasks page within 2 s of the
        # allocator knowing it (Mesos' /master/tasks, polled beside the page).
        page.goto(f"{URL}/ui/#/tasks")
        page.wait_for_selector("#tasks")
        task = subprocess.Popen(
            [STRATA, "--allocator", ALLOCATOR, "run", "--detach", "--task-id",
             TASK_ID, "--name", "busy", "--cpus", "0.2", "--shell", "--", SCRIPT],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        row = f'#tasks tr[data-task="{TASK_ID}"]'
        known = shown = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (known is None or shown is None):
            now = time.monotonic()
            if known is None and api_knows_task():
                known = now
            if shown is None and page.locator(row).count() > 0:
                shown = now
            time.sleep(0.05)
        if known is None or shown is None:
            fail(f"the task did not show (allocator: {known}, page: {shown})")
        lag = max(0.0, shown - known)
        figures["task_shown_after_s"] = round(lag, 3)
        if lag > 2.0:
            fail(f"the task showed {lag:.2f} s after the allocator knew it (> 2 s)")
        page.wait_for_selector(f"{row} .state.TASK_RUNNING", timeout=15_000)
        # Usage arrives from the agent's reports: a sparkline row.
        try:
            page.wait_for_selector(f"{row} svg.spark polyline", timeout=15_000)
            figures["usage_sparkline"] = True
        except Exception:  # noqa: BLE001 - reported as a figure
            figures["usage_sparkline"] = False
        shot(page, "tasks")

        # Its page: the output followed live.
        page.click(f"{row} a")
        page.wait_for_selector("#log")
        wait("the task's output in the page",
             lambda: "tick" in page.inner_text("#log"), 20, 0.2)
        first = page.inner_text("#log").count("tick")
        wait("more output, followed live",
             lambda: page.inner_text("#log").count("tick") > first, 20, 0.2)
        shot(page, "task")

        # A CPU profile, drawn as an SVG flame graph.
        page.click("#profile")
        page.wait_for_selector("#flame", timeout=40_000)
        if page.locator("#flame-img").count() == 0:
            fail("no flame graph: " + page.inner_text("#flame"))
        src = page.get_attribute("#flame-img", "src") or ""
        if not src.startswith("data:image/svg+xml;base64,"):
            fail(f"the flame graph is not an SVG: {src[:60]}")
        figures["flame_graph_svg_bytes"] = len(src) * 3 // 4
        shot(page, "profile")

        # Kill from the page (the confirmation accepted): TASK_KILLED.
        page.click("#kill")
        page.wait_for_selector("#task-state-badge.TASK_KILLED", timeout=20_000)
        shot(page, "killed")

        page.goto(f"{URL}/ui/#/events")
        wait("TASK_KILLED in the event feed",
             lambda: "TASK_KILLED" in page.inner_text("#feed"), 5)
        shot(page, "events")

        # Drain and reactivate the agent, each confirmed, each seen live.
        page.goto(f"{URL}/ui/#/agents")
        page.click("#agents button[data-act=drain]")
        page.wait_for_selector("#agents .state.draining", timeout=5_000)
        shot(page, "agent-draining")
        page.click("#agents button[data-act=reactivate]")
        page.wait_for_selector("#agents .state.active:not(.connected)", timeout=5_000)

        # Apps & jobs, as strata-services and strata-jobs report them: each shows within 2 s
        # of the CLI's answer, and a scale changes the app's count live.
        page.goto(f"{URL}/ui/#/apps")
        page.wait_for_selector("#apps")
        app_row = f'#apps tr[data-kind="app"][data-workload="{APP_ID}"]'
        job_row = f'#apps tr[data-kind="job"][data-workload="{JOB_ID}"]'
        cli(["app", "--services", SERVICES, "deploy", definition(APP)])
        t0 = time.monotonic()
        wait("the app on the page", lambda: page.locator(app_row).count() > 0, 2)
        figures["app_shown_after_s"] = round(time.monotonic() - t0, 3)
        cli(["job", "--jobs", JOBS, "add", definition(JOB)])
        t0 = time.monotonic()
        wait("the job on the page", lambda: page.locator(job_row).count() > 0, 2)
        figures["job_shown_after_s"] = round(time.monotonic() - t0, 3)
        schedule = page.inner_text(job_row)
        if "0 3 * * *" not in schedule:
            fail(f"the job's row does not show its schedule: {schedule!r}")
        wait("the app's instance running",
             lambda: page.inner_text(f"{app_row} .instances").strip() == "1 / 1", 30, 0.1)
        cli(["app", "--services", SERVICES, "scale", APP_ID, "2"])
        t0 = time.monotonic()
        wait("the app's new count on the page",
             lambda: page.inner_text(f"{app_row} .instances").strip().endswith("/ 2"), 2)
        figures["scale_shown_after_s"] = round(time.monotonic() - t0, 3)
        wait("the app's second instance running",
             lambda: page.inner_text(f"{app_row} .instances").strip() == "2 / 2", 30, 0.1)
        shot(page, "apps")

        if errors:
            fail("errors in the page: " + "; ".join(errors))
        figures["timings"] = page.evaluate("() => window.strataUi.timings")
        browser.close()
    if task is not None:
        try:
            task.wait(timeout=20)
        except subprocess.TimeoutExpired:
            task.kill()
            fail("strata run did not end once its task was killed")
    print("test_ui: figures " + json.dumps(figures))
    print("test_ui: passed")


if __name__ == "__main__":
    main()
