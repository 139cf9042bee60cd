"""PyTorch peers for `mixc bench --vs torch`.

Times whole layers, the same work as mixc's std mixers, on the same shapes
and device as the mixc run (x: [B, L, D] in, [B, L, D] out):
  - a causal attention layer (q, k, v projections as one matmul, attention,
    output projection), the attention through scaled_dot_product_attention
    once per SDPA backend that accepts the shape (flash, cuDNN, efficient,
    math), and through flex_attention (compiled);
  - with --mask EXPR (the benchmarked mixer's mask, written by mixc as a
    Python expression over q_idx, kv_idx and L): the same layer with
    flex_attention and that mask_mod, and with SDPA and the mask as a dense
    boolean tensor;
  - an order-2 Hyena operator written plainly with torch.fft (in-projection,
    short depthwise conv, FFT long conv with a per-channel filter, gates,
    out-projection).
Each result is one JSON object per line on stdout:
  {"source": "torch", "mixer": NAME, "seq": L, "median_s": .., "min_s": ..,
   "max_s": .., "reps": N}  or  {..., "skipped": REASON}.
Exit status 3 means torch is not importable.
"""

import argparse
import json
import statistics
import sys
import time

# Above this length the compiled flex_attention is not run on the CPU.
FLEX_CPU_MAX = 8192

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    print(f"torch is not importable: {e}", file=sys.stderr)
    sys.exit(3)


def timed(fn, device, warmup, reps):
    for _ in range(warmup):
        fn()
    samples = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) * 1e-3)
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "reps": len(samples),
    }


def emit(name, seq, result):
    row = {"source": "torch", "mixer": name, "seq": seq}
    row.update(result)
    print(json.dumps(row), flush=True)


def attention_peers(args, seq, dtype):
    dev = args.device
    h = args.heads
    e = args.dim // h
    d = args.dim
    x = torch.randn(args.batch, seq, d, device=dev, dtype=dtype)
    w_qkv = torch.randn(d, 3 * d, device=dev, dtype=dtype) / d**0.5
    w_o = torch.randn(d, d, device=dev, dtype=dtype) / d**0.5

    def layer(attend):
        """x -> q, k, v -> attend(q, k, v) -> output projection."""
        q, k, v = (x @ w_qkv).view(args.batch, seq, 3, h, e).permute(2, 0, 3, 1, 4)
        o = attend(q, k, v)
        return o.transpose(1, 2).reshape(args.batch, seq, d) @ w_o

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [
        ("sdpa flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)),
        ("sdpa efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("sdpa math", SDPBackend.MATH),
    ]
    if dev == "cpu":
        backends = [("sdpa", None)]
    for name, backend in backends:
        name = f"attention layer ({name})"
        try:
            if backend is None and dev == "cpu":

                def fn():
                    return layer(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))

            elif backend is None:
                raise RuntimeError("this torch has no such backend")
            else:

                def fn(backend=backend):
                    with sdpa_kernel(backend):
                        return layer(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))

            with torch.no_grad():
                emit(name, seq, timed(fn, dev, args.warmup, args.reps))
        except Exception as ex:  # noqa: BLE001
            emit(name, seq, {"skipped": str(ex).splitlines()[0][:160]})
    masks = [("attention layer (flex_attention)", "q_idx >= kv_idx")]
    if args.mask:
        masks.append((f"attention layer (flex_attention, {args.mask_name} mask)", args.mask))
    for name, expr in masks:
        if dev == "cpu" and seq > FLEX_CPU_MAX:
            emit(name, seq, {"skipped": f"flex_attention on the CPU above L={FLEX_CPU_MAX}: at L=16384 its process was killed (24 GiB machine)"})
            continue
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def mask_mod(b, hh, q_idx, kv_idx, expr=expr):
                return eval(expr, {"L": seq, "max": max, "min": min}, {"q_idx": q_idx, "kv_idx": kv_idx})

            mask = create_block_mask(mask_mod, None, None, seq, seq, device=dev)
            flex = torch.compile(flex_attention)
            fn = lambda: layer(lambda q, k, v: flex(q, k, v, block_mask=mask))  # noqa: E731
            with torch.no_grad():
                emit(name, seq, timed(fn, dev, args.warmup, args.reps))
        except Exception as ex:  # noqa: BLE001
            emit(name, seq, {"skipped": str(ex).strip().splitlines()[0][:160] if str(ex).strip() else type(ex).__name__})
    if args.mask:
        name = f"attention layer (sdpa, {args.mask_name} mask, dense)"
        try:
            qi = torch.arange(seq, device=dev)[:, None]
            ki = torch.arange(seq, device=dev)[None, :]
            dense = eval(args.mask, {"L": seq, "max": max, "min": min}, {"q_idx": qi, "kv_idx": ki})
            dense = dense.expand(seq, seq)
            fn = lambda: layer(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense))  # noqa: E731
            with torch.no_grad():
                emit(name, seq, timed(fn, dev, args.warmup, args.reps))
        except Exception as ex:  # noqa: BLE001
            emit(name, seq, {"skipped": str(ex).strip().splitlines()[0][:160] if str(ex).strip() else type(ex).__name__})


def hyena_peer(args, seq, dtype):
    dev = args.device
    d = args.dim
    x = torch.randn(args.batch, seq, d, device=dev, dtype=dtype)
    w_in = torch.randn(d, 3 * d, device=dev, dtype=dtype) / d**0.5
    w_out = torch.randn(d, d, device=dev, dtype=dtype) / d**0.5
    short = torch.randn(3 * d, 1, 3, device=dev, dtype=dtype)
    filt = torch.randn(d, seq, device=dev, dtype=dtype) * torch.exp(
        -torch.linspace(0, 4, seq, device=dev, dtype=dtype)
    )
    bias = torch.randn(d, device=dev, dtype=dtype)

    def fn():
        u = (x @ w_in).transpose(1, 2)  # B, 3D, L
        u = F.conv1d(u, short, padding=2, groups=3 * d)[..., :seq]
        x0, x1, v = u.split(d, dim=1)
        v = v * x1
        n = 2 * seq
        y = torch.fft.irfft(
            torch.fft.rfft(v.float(), n=n) * torch.fft.rfft(filt.float(), n=n), n=n
        )[..., :seq].to(dtype)
        y = y + v * bias[:, None]
        y = (y * x0).transpose(1, 2)
        return y @ w_out

    try:
        with torch.no_grad():
            emit("hyena layer (torch.fft)", seq, timed(fn, dev, args.warmup, args.reps))
    except Exception as ex:  # noqa: BLE001
        emit("hyena layer (torch.fft)", seq, {"skipped": str(ex).splitlines()[0][:160]})


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
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch has no CUDA device", file=sys.stderr)
        sys.exit(4)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    for seq in [int(s) for s in args.seq.split(",")]:
        attention_peers(args, seq, dtype)
        hyena_peer(args, seq, dtype)


if __name__ == "__main__":
    main()
