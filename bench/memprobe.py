"""Scratch: RSS timeline of a node during a 2-client ingest (not part of make bench)."""
import sys, threading, time, os, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent)); sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import start_node, write_ndjson, peak_rss_bytes
from support import loghub_records, metric
import query as q

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 6_000_000
env = dict(q.NODE_ENV); env.update(dict(a.split("=", 1) for a in sys.argv[2:]))
records = loghub_records()
path = Path("/tmp/mp/data.ndjson")
batches = write_ndjson(path, records, rows)
server = start_node(**env)
stop = False
def rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) // 1024
def sampler():
    t0 = time.time()
    while not stop:
        try:
            m = {k: metric(server, k) for k in ("helios_memtable_rows", "helios_memtable_bytes", "helios_flushes_total", "helios_compactions_total", "helios_ingested_rows_total")}
        except Exception as e:
            m = str(e)[:50]
        print(f"{time.time()-t0:6.1f}s rss={rss(server.proc.pid)}MiB hwm={peak_rss_bytes(server.proc.pid)>>20} {m}", flush=True)
        time.sleep(2)
th = threading.Thread(target=sampler, daemon=True); th.start()
rate = q.ingest(server, path, batches, 2)
print("rate", rate, flush=True)
time.sleep(float(os.environ.get("TAIL", "40")))
stop = True
print("hwm", peak_rss_bytes(server.proc.pid) >> 20)
server.stop()
