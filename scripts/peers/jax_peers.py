"""JAX peers for `mixc bench --vs jax` (CPU): whole layers, the same work as
mixc's std mixers (x: [B, L, D] in, [B, L, D] out), jit-compiled by XLA, on
the mixc run's shapes: a causal attention layer (q, k, v projections as one
matmul, dense masked softmax attention, output projection), the same layer
with the benchmarked mixer's mask (--mask), and an order-2 Hyena layer with
jnp.fft.
Output protocol as torch_peers.py: one JSON object per line; exit status 3
means jax is not importable.
"""

import argparse
import json
import statistics
import sys
import time

try:
    import jax
    import jax.numpy as jnp
except Exception as e:  # noqa: BLE001
    print(f"jax is not importable: {e}", file=sys.stderr)
    sys.exit(3)


def timed(fn, warmup, reps):
    for _ in range(max(warmup, 1)):  # the first call compiles
        fn().block_until_ready()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn().block_until_ready()
        samples.append(time.perf_counter() - t)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "reps": len(samples),
    }


def emit(name, seq, result):
    row = {"source": "jax", "mixer": name, "seq": seq}
    row.update(result)
    print(json.dumps(row), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--mask", default=None)
    p.add_argument("--mask-name", default="mixer")
    args = p.parse_args()
    key = jax.random.PRNGKey(0)
    b, d, h = args.batch, args.dim, args.heads
    e = d // h
    for seq in [int(s) for s in args.seq.split(",")]:
        x = jax.random.normal(key, (b, seq, d))
        w_qkv = jax.random.normal(jax.random.fold_in(key, 1), (d, 3 * d)) / d**0.5
        w_o = jax.random.normal(jax.random.fold_in(key, 2), (d, d)) / d**0.5

        def layer(attend):
            """x -> q, k, v -> attend(q, k, v) -> output projection."""

            def f(x):
                qkv = (x @ w_qkv).reshape(b, seq, 3, h, e).transpose(2, 0, 3, 1, 4)
                o = attend(qkv[0], qkv[1], qkv[2])
                return o.transpose(0, 2, 1, 3).reshape(b, seq, d) @ w_o

            return jax.jit(f)

        def causal(q, k, v):
            s = jnp.einsum("bhqe,bhke->bhqk", q, k) / jnp.sqrt(e)
            mask = jnp.tril(jnp.ones((seq, seq), dtype=bool))
            s = jnp.where(mask, s, -jnp.inf)
            return jnp.einsum("bhqk,bhke->bhqe", jax.nn.softmax(s, axis=-1), v)

        attention = layer(causal)
        try:
            emit("attention layer (jnp)", seq, timed(lambda: attention(x), args.warmup, args.reps))
        except Exception as ex:  # noqa: BLE001
            emit("attention layer (jnp)", seq, {"skipped": str(ex).splitlines()[0][:160]})

        if args.mask:
            name = f"attention layer (jnp, {args.mask_name} mask)"
            try:
                qi = jnp.arange(seq)[:, None]
                ki = jnp.arange(seq)[None, :]
                keep = eval(args.mask, {"L": seq, "max": max, "min": min}, {"q_idx": qi, "kv_idx": ki})
                keep = jnp.broadcast_to(keep, (seq, seq))

                def masked_attention(q, k, v):
                    s = jnp.einsum("bhqe,bhke->bhqk", q, k) / jnp.sqrt(e)
                    s = jnp.where(keep, s, -jnp.inf)
                    p = jnp.where(keep, jax.nn.softmax(s, axis=-1), 0.0)
                    return jnp.einsum("bhqk,bhke->bhqe", jnp.nan_to_num(p), v)

                masked = layer(masked_attention)
                emit(name, seq, timed(lambda: masked(x), args.warmup, args.reps))
            except Exception as ex:  # noqa: BLE001
                emit(name, seq, {"skipped": str(ex).splitlines()[0][:160]})

        w_in = jax.random.normal(jax.random.fold_in(key, 5), (d, 3 * d)) / d**0.5
        w_out = jax.random.normal(jax.random.fold_in(key, 6), (d, d)) / d**0.5
        short = jax.random.normal(jax.random.fold_in(key, 7), (3 * d, 3))
        filt = jax.random.normal(jax.random.fold_in(key, 8), (d, seq)) * jnp.exp(
            -jnp.linspace(0, 4, seq)
        )
        bias = jax.random.normal(jax.random.fold_in(key, 9), (d,))

        @jax.jit
        def hyena(x):
            u = jnp.swapaxes(x @ w_in, 1, 2)  # B, 3D, L
            pad = jnp.pad(u, ((0, 0), (0, 0), (2, 0)))
            u = sum(short[None, :, t, None] * pad[:, :, 2 - t : 2 - t + seq] for t in range(3))
            x0, x1, vv = jnp.split(u, 3, axis=1)
            vv = vv * x1
            n = 2 * seq
            y = jnp.fft.irfft(jnp.fft.rfft(vv, n=n) * jnp.fft.rfft(filt, n=n), n=n)[..., :seq]
            y = (y + vv * bias[:, None]) * x0
            return jnp.swapaxes(y, 1, 2) @ w_out

        try:
            emit("hyena layer (jnp.fft)", seq, timed(lambda: hyena(x), args.warmup, args.reps))
        except Exception as ex:  # noqa: BLE001
            emit("hyena layer (jnp.fft)", seq, {"skipped": str(ex).splitlines()[0][:160]})


if __name__ == "__main__":
    main()
