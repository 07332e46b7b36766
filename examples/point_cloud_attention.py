"""A Point Transformer v2 style attention layer on a synthetic point cloud, with fastattn.

    python examples/point_cloud_attention.py [--points 6000] [--neighbours 16] [--png PATH]

(the PNG goes next to this script unless --png says otherwise)

What it does (everything generated here, no downloads):

1. Samples a shape: a torus with a sphere through its hole, points on both surfaces, shuffled.
2. Builds each point's neighbourhood with fastattn.knn(points, S) (exact, k-d tree).
3. Runs one grouped-vector-attention layer: per-point features (coordinates and a few functions of
   them) projected to queries, keys and values (C channels); a positional encoding
   delta_ij = MLP(p_j - p_i) on the relative coordinates; relation q_i - k_j + delta_ij through a weight
   MLP C -> G -> G; per-group softmax over the neighbours; out_i = sum_j a_ij (v_j + delta_ij). The
   layer is one call to fastattn.vector_attention; the same layer in plain float64 NumPy checks it.
4. Saves a PNG: the points coloured by one channel of the output, and by the attention that one
   group of channels pays to each point (sum over the queries whose neighbourhood holds it), plus one
   query's neighbourhood coloured by its weights.

matplotlib is needed for the PNG only (pip install matplotlib); --png '' skips it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import fastattn


def sample_shape(rng, n):
    """n points: 70% on a torus (radii 1 and 0.35, in the xy plane), 30% on a sphere of radius 0.45
    centred at the torus's centre and lifted through its hole."""
    n_torus = int(0.7 * n)
    u, v = rng.uniform(0, 2 * np.pi, (2, n_torus))
    torus = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)], 1)
    d = rng.standard_normal((n - n_torus, 3))
    sphere = 0.45 * d / np.linalg.norm(d, axis=1, keepdims=True) + np.array([0.0, 0.0, 0.5])
    points = np.concatenate([torus, sphere]) + 0.005 * rng.standard_normal((n, 3))
    return points[rng.permutation(n)].astype(np.float32)


class Layer:
    """The layer's weights (random, seeded): feature projections, positional MLP 3 -> C -> C, weight
    MLP C -> G -> G."""

    def __init__(self, rng, features, channels, groups):
        def linear(n_out, n_in):
            return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

        self.wq, self.wk, self.wv = (linear(channels, features) for _ in range(3))
        self.pos1, self.pos1_b = linear(channels, 3), np.zeros(channels, np.float32)
        self.pos2, self.pos2_b = linear(channels, channels), np.zeros(channels, np.float32)
        self.mlp = (linear(groups, channels), (0.1 * rng.standard_normal(groups)).astype(np.float32),
                    4 * linear(groups, groups), np.zeros(groups, np.float32))

    def inputs(self, points, features, index):
        q, k, v = features @ self.wq.T, features @ self.wk.T, features @ self.wv.T
        rel = points[np.maximum(index, 0)] - points[:, None, :]  # (N, S, 3): p_j - p_i
        pos = np.maximum(rel @ self.pos1.T + self.pos1_b, 0) @ self.pos2.T + self.pos2_b
        return q, k, v, pos.astype(np.float32)


def numpy_layer(q, k, v, index, pos, mlp):
    """The same attention in float64 NumPy, written out (every neighbour of this example exists)."""
    q, k, v, pos = (x.astype(np.float64) for x in (q, k, v, pos))
    w1, b1, w2, b2 = (x.astype(np.float64) for x in mlp)
    r = q[:, None, :] - k[index] + pos
    w = np.maximum(r @ w1.T + b1, 0) @ w2.T + b2  # (N, S, G)
    a = np.exp(w - w.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    n, s, c = pos.shape
    g = w2.shape[0]
    return np.einsum("nsg,nsgc->ngc", a, (v[index] + pos).reshape(n, s, g, c // g)).reshape(n, c)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=6000)
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--png", default=str(Path(__file__).with_suffix(".png")), help="'' to skip the plot")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    points = sample_shape(rng, args.points)
    t0 = time.perf_counter()
    index = fastattn.knn(points, args.neighbours)
    t_knn = time.perf_counter() - t0
    radius = np.linalg.norm(points[:, :2], axis=1, keepdims=True)
    features = np.concatenate([points, radius, np.sin(4 * points)], axis=1).astype(np.float32)

    layer = Layer(rng, features.shape[1], args.channels, args.groups)
    q, k, v, pos = layer.inputs(points, features, index)
    t0 = time.perf_counter()
    out, weights = fastattn.vector_attention(q, k, v, index=index, pos=pos, weight_mlp=layer.mlp,
                                             return_weights=True)
    t_attn = time.perf_counter() - t0
    expected = numpy_layer(q, k, v, index, pos, layer.mlp)
    err = np.abs(out - expected).max() / np.abs(expected).max()
    print(f"{args.points} points, {args.neighbours} neighbours, C={args.channels}, G={args.groups}")
    print(f"knn: {t_knn * 1e3:.1f} ms; vector_attention: {t_attn * 1e3:.1f} ms ({fastattn.last_kernel()})")
    print(f"max relative difference from the float64 NumPy layer: {err:.1e}")
    assert err < 1e-4, "fastattn and the NumPy layer disagree"

    if args.png:
        plot(args.png, points, index, out, weights, args.channels, args.groups)


def plot(path, points, index, out, weights, channels, groups):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)")
        return
    group = 0  # channels 0 .. C/G - 1 (blocked sharing)
    received = np.zeros(len(points))
    np.add.at(received, index.ravel(), weights[:, :, group].ravel())  # attention paid to each point
    query = int(np.argmax(points[:, 2]))  # the top of the sphere
    fig = plt.figure(figsize=(15, 5))
    panels = [
        ("output channel 0", points, out[:, 0], "viridis"),
        (f"attention received, group {group} (channels 0-{channels // groups - 1})", points, received, "magma"),
    ]
    for i, (title, pts, colour, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        sc = ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colour, s=2, cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_box_aspect((1, 1, 0.6))
        fig.colorbar(sc, ax=ax, shrink=0.6)
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    nb = points[index[query]]
    sc = ax.scatter(nb[:, 0], nb[:, 1], nb[:, 2], c=weights[query, :, group], s=40, cmap="magma")
    ax.scatter(*points[query], c="cyan", s=80, marker="*")
    ax.set_title(f"point {query}'s neighbours: weights of group {group}", fontsize=9)
    fig.colorbar(sc, ax=ax, shrink=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
