"""hnswlib on the vectors search_bench wrote (--dump-vectors): build time
with M = 16, ef_construction = 128 on one thread, then QPS and recall@10
against exact cosine search, at the ef_search values search_bench reports."""

import sys
import time

import hnswlib
import numpy as np

folder, dim = sys.argv[1], int(sys.argv[2])
base = np.fromfile(f"{folder}/base.f32", dtype="<f4").reshape(-1, dim)
queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(-1, dim)
n, k = len(base), 10

index = hnswlib.Index(space="cosine", dim=dim)
index.init_index(max_elements=n, ef_construction=128, M=16, random_seed=7)
index.set_num_threads(1)
t = time.perf_counter()
index.add_items(base, np.arange(n))
build = time.perf_counter() - t
print(f"## hnswlib {hnswlib.__version__ if hasattr(hnswlib, '__version__') else ''}: "
      f"{n} x {dim}, cosine, M = 16, ef_construction = 128, one thread\n")
print(f"Build: {build:.1f} s ({n / build:.0f} vectors/s)\n")

unit = base / np.linalg.norm(base, axis=1, keepdims=True)
q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
truth = np.argsort(-(q_unit @ unit.T), axis=1)[:, :k]

print("| ef_search | QPS (1 thread) | recall@10 |")
print("|---|---:|---:|")
for ef in (32, 64, 128):
    index.set_ef(ef)
    t = time.perf_counter()
    found = [index.knn_query(q, k=k)[0][0] for q in queries]
    elapsed = time.perf_counter() - t
    recall = np.mean([len(set(f) & set(t_)) / k for f, t_ in zip(found, truth)])
    print(f"| {ef} | {len(queries) / elapsed:,.0f} | {recall:.3f} |")
