#!/usr/bin/env python3
"""Resident memory of a front end before, during and after a flood of connections.

Starts target/release/frontend alone on a spare port (no catalog or replicas are needed: the
flood's requests are GET /health, answered 503 without them), reads its RSS idle, opens N
keep-alive connections that each send one request and read the answer, reads the RSS with all
of them open, closes them, and reads the RSS again after a settle time with light traffic
(one request per 50 ms, as a service that goes on living sees). Prints one line per
phase; run it a few times and quote medians.

usage: bench/flood.py [--connections N] [--settle SECONDS] [--binary PATH]
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def spare_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=4500)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--binary", default="target/release/frontend")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    port = spare_port()
    env = dict(os.environ, RUST_LOG="warn")
    server = subprocess.Popen(
        [args.binary, "--listen", f"127.0.0.1:{port}", "--catalog", "127.0.0.1:1",
         "--order-peers", "1=127.0.0.1:1,2=127.0.0.1:1,3=127.0.0.1:1",
         "--max-http-connections", str(args.connections + 100)],
        env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("front end did not start")
                time.sleep(0.05)
        time.sleep(0.5)
        idle = rss_kib(server.pid)
        request = b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n"
        conns = []
        for _ in range(args.connections):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(request)
            conns.append(c)
        for c in conns:
            c.recv(4096)
        flooded = rss_kib(server.pid)
        for c in conns:
            c.close()
        # The service keeps living: light traffic (one request per 50 ms) during the settle.
        end = time.time() + args.settle
        while time.time() < end:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(request)
                c.recv(4096)
            time.sleep(0.05)
        after = rss_kib(server.pid)
        print(f"connections {args.connections}: idle {idle / 1024:.1f} MiB, "
              f"flooded {flooded / 1024:.1f} MiB, {args.settle:.0f} s after "
              f"{after / 1024:.1f} MiB ({after / idle:.2f}x idle)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
