"""The explorer as a network service under load: a burst of uploads, hostile images, a lying header.

    python -m benchmarks.explore_load --image ../shared/data/cifar10-jpg/test/ship/0001.jpg

Starts `python -m infer.explore` (ViT-Ti/16 by name, random weights: the figures are the
server's, not the model's) as its own process on a free port, then measures:

    burst        N uploads of --image at once (threads): how many got an answer, and which
    16-bit PNGs  three 9999 x 9999 16-bit PNGs (194 KB each) uploaded at once: the server's peak
                 resident memory (VmHWM) above its level before, and how they were answered
    refusal      a POST announcing Content-Length 10^12: the time until the 413 arrives
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from infer.cpu import cpu_kind


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux's VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def upload(url: str, body: bytes) -> int:
    request = urllib.request.Request(f"{url}/api/image", data=body, headers={"X-File-Name": "x.png"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:  # a connection reset: no answer
        return 0


def refusal_seconds(url: str, repeats: int = 5) -> float:
    host, port = url.split("//")[1].split(":")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(f"POST /api/image HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10**12}\r\n\r\n".encode())
            answer = connection.recv(4096)
        times.append(time.perf_counter() - start)
        assert b" 413 " in answer.split(b"\r\n")[0], answer[:80]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="a small image to upload in the burst")
    parser.add_argument("--burst", type=int, default=50, help="uploads at once (default: 50)")
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, "-m", "infer.explore", "--model", "vit_tiny_patch16_224",
                               "--pretrained", "none", "--port", "0", "--device", "cpu"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0].rstrip("/")
        image = Path(args.image).read_bytes()
        assert upload(url, image) == 200  # warm: the first forward pass

        start = time.perf_counter()
        with ThreadPoolExecutor(args.burst) as pool:
            statuses = list(pool.map(lambda _: upload(url, image), range(args.burst)))
        burst_seconds = time.perf_counter() - start

        with tempfile.TemporaryDirectory() as folder:
            pixels = np.zeros((9999, 9999), dtype=np.uint16)
            pixels[::7] = 40000
            Image.fromarray(pixels).save(Path(folder) / "big16.png", optimize=True)
            big = (Path(folder) / "big16.png").read_bytes()
        before = peak_rss_mb(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            big_statuses = list(pool.map(lambda _: upload(url, big), range(3)))
        big_seconds = time.perf_counter() - start
        after = peak_rss_mb(server.pid)

        print(json.dumps({
            "cpu": cpu_kind(),
            "burst": {"uploads": args.burst, "answered 200": statuses.count(200),
                      "no answer": statuses.count(0), "seconds": round(burst_seconds, 2)},
            "16-bit PNGs": {"bytes each": len(big), "statuses": big_statuses, "seconds": round(big_seconds, 2),
                            "peak MB before": round(before), "peak MB after": round(after),
                            "peak rise MB": round(after - before)},
            "refuse Content-Length 10^12": {"median ms": round(1000 * refusal_seconds(url), 2)},
        }, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
