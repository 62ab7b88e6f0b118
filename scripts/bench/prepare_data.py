#!/usr/bin/python3
"""Prepares the index benchmark data sets in a work directory (.fvecs/.ivecs):

fashion:  Fashion-MNIST (Debian dataset-fashion-mnist), 60,000 train images as base, the first
          1,000 t10k images as queries, Euclidean, exact top-100 ground truth.
synth1536: 100,000 x 1536 embedding-like vectors (seeded): cluster centres in a 64-d latent
          space, per-point latent noise, a fixed random projection to 1536-d, a little
          ambient noise, normalised (cosine); 1,000 queries from the same distribution.
gauss1536: the vectors scripts/bench_api.py generates by default (100,000 + 500 queries, one
          isotropic Gaussian in a 32-d latent space, no clusters, rounded to 7 decimals as the
          HTTP runs send them), so the in-process and HTTP figures can be compared on one set.

Usage: prepare_data.py WORKDIR [--small] [--sets fashion,synth1536,gauss1536]
       (--small: 20k x 1536 for a quick run; default sets: fashion,synth1536)
"""
import gzip
import os
import struct
import sys

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"


def write_vecs(path, arr, dtype):
    arr = np.ascontiguousarray(arr, dtype=dtype)
    n, d = arr.shape
    out = np.empty((n, d + 1), dtype=dtype)
    out[:, 0] = np.array([d], dtype=np.int32).view(dtype)[0]
    out[:, 1:] = arr
    tmp = path + ".tmp"
    out.tofile(tmp)
    os.replace(tmp, path)


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, path
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows * cols).astype(np.float32)


def ground_truth(base, queries, k, metric):
    gt = np.empty((len(queries), k), dtype=np.int32)
    bn = (base * base).sum(1)
    for s in range(0, len(queries), 100):
        q = queries[s:s + 100]
        if metric == "l2":
            d = bn[None, :] - 2.0 * (q @ base.T)
        else:
            d = -(q @ base.T)
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
        gt[s:s + 100] = np.take_along_axis(part, order, 1)
    return gt


def prep_fashion(work):
    out = os.path.join(work, "fashion")
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "gt.ivecs")):
        return
    base = read_idx_images(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    queries = read_idx_images(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))[:1000]
    write_vecs(os.path.join(out, "base.fvecs"), base, np.float32)
    write_vecs(os.path.join(out, "query.fvecs"), queries, np.float32)
    gt = ground_truth(base.astype(np.float64), queries.astype(np.float64), 100, "l2")
    write_vecs(os.path.join(out, "gt.ivecs"), gt, np.int32)


def synth(rng, proj, centres, n, lat_noise):
    lat = centres[rng.integers(0, len(centres), n)] + lat_noise * rng.standard_normal((n, proj.shape[0]), dtype=np.float32)
    x = lat @ proj
    x += 0.02 * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def prep_synth(work, n):
    out = os.path.join(work, "synth1536" if n == 100000 else "synth1536_%d" % n)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "gt.ivecs")):
        return out
    rng = np.random.default_rng(1536)
    latent, nclust, dim = 64, 200, 1536
    proj = (rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((nclust, latent), dtype=np.float32)
    parts = [synth(rng, proj, centres, 10000, 0.6) for _ in range(n // 10000)]
    base = np.concatenate(parts)
    queries = synth(rng, proj, centres, 1000, 0.6)
    write_vecs(os.path.join(out, "base.fvecs"), base, np.float32)
    write_vecs(os.path.join(out, "query.fvecs"), queries, np.float32)
    gt = ground_truth(base, queries, 100, "ip")
    write_vecs(os.path.join(out, "gt.ivecs"), gt, np.int32)
    return out


def prep_gauss(work, n, nq=500, dim=1536, digits=7):
    """bench_api.py's embedding_like(): keep the two in step."""
    out = os.path.join(work, "gauss1536" if n == 100000 else "gauss1536_%d" % n)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "gt.ivecs")):
        return out
    rng = np.random.default_rng(42)
    z = rng.standard_normal((n + nq, 32)).astype(np.float32)
    proj = np.random.default_rng(1234).standard_normal((32, dim)).astype(np.float32)
    x = z @ proj + 0.1 * rng.standard_normal((n + nq, dim)).astype(np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    x = np.round(x, digits).astype(np.float32)
    # the server stores cosine vectors normalised; so does the index benchmark's reader
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base, queries = x[:n], x[n:]
    write_vecs(os.path.join(out, "base.fvecs"), base, np.float32)
    write_vecs(os.path.join(out, "query.fvecs"), queries, np.float32)
    gt = ground_truth(base, queries, 100, "ip")
    write_vecs(os.path.join(out, "gt.ivecs"), gt, np.int32)
    return out


def main():
    work = sys.argv[1]
    small = "--small" in sys.argv
    sets = "fashion,synth1536"
    if "--sets" in sys.argv:
        sets = sys.argv[sys.argv.index("--sets") + 1]
    sets = sets.replace(" ", ",").split(",")
    os.makedirs(work, exist_ok=True)
    n = 20000 if small else 100000
    if "fashion" in sets:
        prep_fashion(work)
    if "synth1536" in sets:
        prep_synth(work, n)
    if "gauss1536" in sets:
        prep_gauss(work, n)


if __name__ == "__main__":
    main()
