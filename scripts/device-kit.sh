#!/usr/bin/env bash
# The GPU checks as one prepared call, for a machine that has an NVIDIA
# driver and Python (with PyTorch) but no Rust, LLVM or MLIR.
#
#   ./scripts/device-kit.sh prepare        # here: writes device-kit/ (git-ignored)
#   ./scripts/device-kit.sh run [OUTDIR]   # there: checks and timings into OUTDIR
#
# `prepare` builds the slim runner (`mixc-runner`, no LLVM), every example
# and std mixer as sm_90 bundles in f32 and bf16 storage, std attention at
# head dims 64 and 128 (D = 512, 1024) in bf16 and f16 for sm_90 (wgmma)
# and bf16 for sm_80 (mma.sync), and each mixer's reference output: its CPU bundle (checked against the interpreter by the
# test suite) run at the check sizes with the same seed. `run` runs each GPU
# bundle at the check sizes against its reference (f32 within 1e-4, bf16
# within 2e-2: inputs rounded to bf16 on upload), then times it at
# L = 1k, 4k, 16k with per-kernel times, and times PyTorch's attention
# (SDPA backends, flex_attention) and Hyena on the same shapes. It writes
# OUTDIR/summary.txt (one line per check and timing) and OUTDIR/runs.jsonl
# (every runner and peer result); it exits 1 if a check failed.
#
# With the device tool: carry `device-kit` and run
#   ./scripts/device-kit.sh run $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-device-kit}
CHECK_SIZES="B=2,L=1000"
SEED=1
D=64

mixers() {
    ls examples/*.mix std/attention.mix std/hyena.mix
}

prepare() {
    ./scripts/setup.sh
    cargo build --release -p mixc -p mixc-runner
    rm -rf "$KIT"
    mkdir -p "$KIT/bin" "$KIT/gpu" "$KIT/ref" "$KIT/peers"
    cp target/release/mixc-runner "$KIT/bin/"
    cp scripts/peers/torch_peers.py "$KIT/peers/"
    local cpu
    cpu=$(mktemp -d)
    # FILE MIXER NAME DIM VARIANT...: the reference, and a GPU bundle per
    # variant (`dtype` for sm_90, `dtype-sm80` for sm_80).
    kit_one() {
        local f=$1 mixer=$2 name=$3 dim=$4
        shift 4
        target/release/mixc build "$f" --mixer "$mixer" --target cpu --set "D=$dim" --no-cache \
            -o "$cpu/$name" >/dev/null
        "$KIT/bin/mixc-runner" "$cpu/$name" --set "$CHECK_SIZES" --seed "$SEED" \
            --warmup 0 --reps 1 --save "$KIT/ref/$name.f32" >/dev/null
        local v
        for v in "$@"; do
            local dt=${v%-sm80} sm=sm_90
            [ "$dt" = "$v" ] || sm=sm_80
            target/release/mixc build "$f" --mixer "$mixer" --target "$sm" --dtype "$dt" \
                --set "D=$dim" --no-cache -o "$KIT/gpu/$name.$v" >/dev/null
        done
        echo "prepared $name ($*)"
    }
    for f in $(mixers); do
        local mixer
        for mixer in $(sed -n 's/^mixer \([A-Za-z_][A-Za-z0-9_]*\).*/\1/p' "$f"); do
            local name
            name=$(basename "$f" .mix)-$mixer
            [[ $f == std/* ]] && name=std-$name
            kit_one "$f" "$mixer" "$name" "$D" f32 bf16
        done
    done
    # Attention at head dims 64 and 128 (8 heads): on sm_90 both products
    # and the projections run on wgmma, on sm_80 on mma.sync.
    for dim in 512 1024; do
        kit_one std/attention.mix attention "std-attention-attention-d$dim" "$dim" \
            bf16 f16 bf16-sm80
    done
    rm -rf "$cpu"
    du -sh "$KIT"
}

run() {
    local out=${1:-out}
    mkdir -p "$out"
    local summary="$out/summary.txt" runs="$out/runs.jsonl" failed=0
    : >"$summary"
    : >"$runs"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$summary" || true
    for b in "$KIT"/gpu/*; do
        local tag name dt tol
        tag=$(basename "$b")
        name=${tag%.*}
        dt=${tag##*.}
        tol=1e-4
        [ "$dt" = f32 ] || tol=2e-2
        local j
        if ! j=$("$KIT/bin/mixc-runner" "$b" --set "$CHECK_SIZES" --seed "$SEED" --warmup 1 --reps 3 \
            --check "$KIT/ref/$name.f32" --json 2>&1); then
            echo "check $tag: ERROR $(echo "$j" | tail -n 3 | tr '\n' ' ')" | tee -a "$summary"
            failed=1
            continue
        fi
        echo "$j" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$runs"
        if ! echo "$j" | python3 -c "
import json, sys
r = json.load(sys.stdin)
ok = r['rel_err'] is not None and r['rel_err'] < $tol and r['nonfinite'] == 0
print(f\"check $tag: rel_err {r['rel_err']:.3e} (tolerance $tol) {'ok' if ok else 'FAIL'}\")
sys.exit(0 if ok else 1)
" | tee -a "$summary"; then
            failed=1
        fi
    done
    for b in "$KIT"/gpu/*; do
        local tag
        tag=$(basename "$b")
        for l in 1024 4096 16384; do
            local j
            if ! j=$(timeout 120 "$KIT/bin/mixc-runner" "$b" --set "B=1,L=$l" --warmup 3 --reps 20 \
                --profile --json 2>&1); then
                echo "time $tag L=$l: ERROR $(echo "$j" | tail -n 2 | tr '\n' ' ')" | tee -a "$summary"
                continue
            fi
            echo "$j" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$runs"
            echo "$j" | python3 -c "
import json, sys
r = json.load(sys.stdin)
top = sorted((k for k in r['kernels'] or [] if k['median_s']), key=lambda k: -k['median_s'])[:2]
ks = '; '.join(f\"{k['entry']} {k['median_s']*1e3:.3f} ms {k['kind'][:40]}\" for k in top)
print(f\"time $tag L=$l: median {r['median_s']*1e3:.4f} ms, {r['memory_bytes']/2**20:.1f} MiB [{ks}]\")
" | tee -a "$summary"
        done
    done
    for dt in f32 bf16; do
        python3 "$KIT/peers/torch_peers.py" --device cuda --seq 1024,4096,16384 --dim "$D" \
            --heads 4 --dtype "$dt" --reps 20 --warmup 3 2>>"$out/peers.err" | tee -a "$runs" |
            python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    t = r.get('skipped') or f\"{r['median_s']*1e3:.4f} ms\"
    print(f\"peer torch $dt {r['mixer']} L={r['seq']}: {t}\")
" | tee -a "$summary" || true
    done
    return $failed
}

case "${1:-}" in
    prepare) prepare ;;
    run) run "${2:-out}" ;;
    *)
        echo "usage: $0 prepare | run [OUTDIR]" >&2
        exit 2
        ;;
esac
