"""Load benchmark of ``muses serve``: N concurrent clients for T seconds on 127.0.0.1.

The script builds a store (first ``--n-docs`` SciFact abstracts, unless ``--store`` already holds one), starts
``muses serve`` as a subprocess on a free port, waits for ``/health``, runs ``--clients`` threads that each send
``POST /search`` (SciFact test claims, round robin, scale ``--scale``) back to back for ``--seconds``, then stops
the server. It reports requests, errors, qps and latency percentiles (ms), and the server's mean query batch
size (concurrent queries encoded together).

With ``--backends torch,onnx-int8`` it does this once per transformer backend, each with its own store (an int8
backend's vectors need a store built with it), in one run, and adds each backend's qps as a ratio to torch's.

Usage::

    python benchmarks/serve_load.py [--data-dir DIR] [--clients 20] [--seconds 60] [--scale sentence] [--json PATH]
        [--backends torch,onnx-int8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_store(path: Path, data_dir: str | None, n_docs: int, dim: int, backend: str = "torch") -> None:
    from muses.data.beir import load_beir
    from muses.encoder import MultiScaleEncoder
    from muses.store import MemoryStore, StoreConfig

    corpus = load_beir("scifact", "test", data_dir).corpus
    docs = [{"id": i, "text": f"{d['title']}. {d['text']}"} for i, d in list(corpus.items())[:n_docs]]
    encoder = MultiScaleEncoder.from_base(backend=backend)  # type: ignore[arg-type]
    store = MemoryStore.create(path, encoder, StoreConfig(dim=dim), model="default")
    store.add(docs)
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build one in a temp dir)")
    ap.add_argument("--n-docs", type=int, default=500)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--scale", default="sentence")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--backends", default="torch", help="comma-separated transformer backends, torch first")
    args = ap.parse_args()

    from muses.data.beir import load_beir

    queries = list(load_beir("scifact", "test", args.data_dir).queries.values())
    tmp = tempfile.TemporaryDirectory()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results = {}
    for backend in backends:
        store = args.store if args.store and len(backends) == 1 else Path(tmp.name) / f"store-{backend}"
        if not (store / "store.sqlite").exists():
            t0 = time.perf_counter()
            build_store(store, args.data_dir, args.n_docs, args.dim, backend)
            print(f"built {store} from {args.n_docs} abstracts in {time.perf_counter() - t0:.0f} s", flush=True)
        results[backend] = load(store, backend, queries, args)
        print(json.dumps({backend: results[backend]}, indent=2), flush=True)
    result = results[backends[0]] if len(backends) == 1 else {"backends": results}
    if len(backends) > 1 and "torch" in results:
        result["qps_vs_torch"] = {b: round(r["qps"] / results["torch"]["qps"], 2) for b, r in results.items()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def load(store: Path, backend: str, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Serve ``store`` on ``backend`` and run the clients against it; the measured numbers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "muses.cli", "serve", "--store", str(store), "--port", str(port), "--backend", backend],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "MUSES_API_KEY": ""},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not come up")
            time.sleep(0.5)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop = time.perf_counter() + args.seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                n = i
                while time.perf_counter() < stop:
                    q = queries[n % len(queries)]
                    n += args.clients
                    t = time.perf_counter()
                    try:
                        r = c.post("/search", json={"query": q, "scale": args.scale, "k": 10})
                        ok = r.status_code == 200
                    except httpx.HTTPError as e:
                        ok, r = False, None
                        with lock:
                            errors.append(repr(e))
                    dt = time.perf_counter() - t
                    with lock:
                        latencies.append(dt)
                        if not ok and r is not None:
                            errors.append(f"{r.status_code}: {r.text[:100]}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        stats = httpx.get(f"{base}/stats", timeout=10).json()
    finally:
        server.terminate()
        server.wait(30)
    lat = np.asarray(latencies) * 1000
    return {
        "backend": backend,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "scale": args.scale,
        "documents": stats["store"]["documents"],
        "dim": stats["store"]["dim"],
        "requests": len(latencies),
        "errors": len(errors),
        "qps": round(len(latencies) / wall, 2),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "mean_query_batch": round(stats["service"]["query_batches"]["mean_batch_size"], 2),
        "first_errors": errors[:3],
    }


if __name__ == "__main__":
    main()
