#!/usr/bin/env python3
"""The floor of one durable round on this disk: three threads, one file each (as the three
order replicas keep one log each), append a small record and fdatasync it at the same moment;
a round lasts until the last of the three is on disk. Prints the p50 and p99 of a round.

    bench/fsync_probe.py DIR [ROUNDS]      (default 1000 rounds)
"""

import os
import sys
import threading
import time


def main() -> None:
    directory = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    files = [os.open(os.path.join(directory, f"probe-{i}.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for i in range(3)]
    record = b"0\tGameStart\tsell\t1\t1\tkey-probe\t00000000\n"
    start = threading.Barrier(4)
    done = threading.Barrier(4)
    stop = False

    def writer(fd: int) -> None:
        while True:
            start.wait()
            if stop:
                return
            os.write(fd, record)
            os.fdatasync(fd)
            done.wait()

    threads = [threading.Thread(target=writer, args=(fd,)) for fd in files]
    for thread in threads:
        thread.start()
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        start.wait()
        done.wait()
        samples.append(time.perf_counter() - began)
    stop = True
    start.wait()
    for thread in threads:
        thread.join()
    for fd in files:
        os.close(fd)
    samples.sort()
    p50 = samples[len(samples) // 2] * 1e6
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6
    print(f"{p50:.0f} {p99:.0f}")


if __name__ == "__main__":
    main()
