//! What a GPU would fault on or hide, reported as located errors.

use mixc_emu::Machine;

fn module(params: &str, body: &str) -> String {
    format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n\n.visible .entry k({params})\n{{\n\t.shared .align 4 .b8 \tsm[256];\n\t.local .align 4 .b8 \tdepot[16];\n\t.reg .pred \t%p<8>;\n\t.reg .b32 \t%r<32>;\n\t.reg .b64 \t%rd<32>;\n\tmov.u32 \t%r1, %tid.x;\n{body}\n\tret;\n}}\n"
    )
}

/// Launches `k(d)` with `d` a buffer of `n` bytes, over `threads` threads.
fn launch(body: &str, n: usize, threads: u32) -> Result<(), String> {
    let mut m = Machine::new();
    let id = m.load(&module(".param .u64 k_d", body))?;
    let d = m.mem.alloc(n);
    m.launch(id, "k", [2, 1, 1], [threads, 1, 1], 0, &[d])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

const STORE: &str = "\tld.param.b64 \t%rd1, [k_d];\n\tmul.wide.u32 \t%rd2, %r1, 4;\n\tadd.s64 \t%rd3, %rd1, %rd2;\n\tst.global.b32 \t[%rd3], %r1;";

#[test]
fn in_bounds_stores_run() {
    launch(STORE, 4 * 64, 64).unwrap();
}

#[test]
fn an_out_of_bounds_store_is_located() {
    // 65 threads store 4 bytes each into 256 bytes: thread 64 is out.
    let e = launch(STORE, 4 * 64, 65).unwrap_err();
    assert!(e.contains("out-of-bounds global write of 4 bytes"), "{e}");
    assert!(e.contains("0 bytes past the end of the allocation"), "{e}");
    assert!(
        e.contains("kernel `k`") && e.contains("PTX line 16: `st.global.b32"),
        "{e}"
    );
    assert!(
        e.contains("block (0, 0, 0)") && e.contains("thread (64, 0, 0)"),
        "{e}"
    );
    assert!(e.contains("address 0x"), "{e}");
}

#[test]
fn a_misaligned_load_is_located() {
    let body = "\tld.param.b64 \t%rd1, [k_d];\n\tld.global.b32 \t%r2, [%rd1+2];";
    let e = launch(body, 64, 32).unwrap_err();
    assert!(
        e.contains("misaligned global read of 4 bytes") && e.contains("thread (0, 0, 0)"),
        "{e}"
    );
}

/// Thread t writes word t of shared memory, then reads word t + 1.
fn exchange(barrier: bool) -> Result<(), String> {
    let bar = if barrier { "\tbar.sync \t0;\n" } else { "" };
    let body = format!(
        "\tmov.b64 \t%rd1, sm;\n\tmul.wide.u32 \t%rd2, %r1, 4;\n\tadd.s64 \t%rd3, %rd1, %rd2;\n\tst.shared.b32 \t[%rd3], %r1;\n{bar}\tadd.s32 \t%r2, %r1, 1;\n\tand.b32 \t%r2, %r2, 63;\n\tmul.wide.u32 \t%rd4, %r2, 4;\n\tadd.s64 \t%rd5, %rd1, %rd4;\n\tld.shared.b32 \t%r3, [%rd5];"
    );
    launch(&body, 4, 64)
}

#[test]
fn a_missing_barrier_is_a_race() {
    exchange(true).unwrap();
    let e = exchange(false).unwrap_err();
    assert!(e.contains("shared-memory race: thread 1 wrote this word and thread 0 reads it with no barrier between"), "{e}");
    assert!(
        e.contains("ld.shared.b32") && e.contains("address 0x4"),
        "{e}"
    );
}

#[test]
fn a_write_after_another_threads_read_is_a_race() {
    // Thread 0 writes a word; after a barrier every thread reads it, then
    // thread 5 overwrites it with no barrier after the others' reads.
    let body = "\tmov.b64 \t%rd1, sm;\n\tsetp.eq.s32 \t%p2, %r1, 0;\n\t@%p2 st.shared.b32 \t[%rd1+4], %r1;\n\tbar.sync \t0;\n\tld.shared.b32 \t%r2, [%rd1+4];\n\tsetp.ne.s32 \t%p1, %r1, 5;\n\t@%p1 bra \t$L_end;\n\tst.shared.b32 \t[%rd1+4], %r1;\n$L_end:";
    let e = launch(body, 4, 64).unwrap_err();
    assert!(
        e.contains("shared-memory race: other threads read this word and thread 5 writes it"),
        "{e}"
    );
}

#[test]
fn a_read_of_unwritten_shared_memory_is_located() {
    // A load alone is harmless (a vector load may read padding it never
    // uses); using the value is the error.
    let load = "\tmov.b64 \t%rd1, sm;\n\tld.shared.b32 \t%r2, [%rd1+8];";
    launch(load, 4, 32).unwrap();
    let body = format!("{load}\n\tadd.s32 \t%r3, %r2, 1;");
    let e = launch(&body, 4, 32).unwrap_err();
    assert!(
        e.contains("read of register `%r2`, which holds shared memory no thread wrote (loaded at PTX line 14)")
            && e.contains("add.s32"),
        "{e}"
    );
    // Of a vector load, only the elements read from unwritten memory.
    let vector = "\tmov.b64 \t%rd1, sm;\n\tst.shared.b32 \t[%rd1], %r1;\n\tst.shared.b32 \t[%rd1+4], %r1;\n\tld.shared.v4.b32 \t{%r2, %r3, %r4, %r5}, [%rd1];\n\tadd.s32 \t%r6, %r2, %r3;";
    launch(vector, 4, 1).unwrap();
    let e = launch(&format!("{vector}\n\tadd.s32 \t%r7, %r4, 1;"), 4, 1).unwrap_err();
    assert!(e.contains("read of register `%r4`"), "{e}");
}

#[test]
fn a_barrier_some_threads_skip_is_located() {
    // Threads 0..15 branch past the barrier and exit.
    let body = "\tsetp.lt.u32 \t%p1, %r1, 16;\n\t@%p1 bra \t$L_end;\n\tbar.sync \t0;\n$L_end:";
    let e = launch(body, 4, 64).unwrap_err();
    assert!(
        e.contains("barrier not reached by every thread of the block"),
        "{e}"
    );
    assert!(e.contains("bar.sync"), "{e}");
    // A whole warp skipping it is caught too.
    let body = "\tsetp.lt.u32 \t%p1, %r1, 32;\n\t@%p1 bra \t$L_end;\n\tbar.sync \t0;\n$L_end:";
    let e = launch(body, 4, 64).unwrap_err();
    assert!(
        e.contains("barrier not reached by every thread of the block"),
        "{e}"
    );
}

#[test]
fn a_divergent_warp_collective_is_located() {
    let body = "\tsetp.lt.u32 \t%p1, %r1, 16;\n\t@%p1 bra \t$L_end;\n\tshfl.sync.bfly.b32 \t%r2, %r1, 1, 31, -1;\n$L_end:";
    let e = launch(body, 4, 32).unwrap_err();
    assert!(
        e.contains("names lane 0, which does not execute it") && e.contains("shfl.sync"),
        "{e}"
    );
    // Lanes waiting at different collectives.
    let body = "\tsetp.lt.u32 \t%p1, %r1, 16;\n\t@%p1 bra \t$L_a;\n\tshfl.sync.bfly.b32 \t%r2, %r1, 1, 31, -1;\n\tbra.uni \t$L_end;\n$L_a:\n\tshfl.sync.bfly.b32 \t%r2, %r1, 2, 31, -1;\n$L_end:";
    let e = launch(body, 4, 32).unwrap_err();
    assert!(
        e.contains("divergent warp: lanes wait at different collective instructions"),
        "{e}"
    );
}

#[test]
fn a_read_of_an_unwritten_register_is_located() {
    let body = "\tadd.s32 \t%r3, %r2, 1;";
    let e = launch(body, 4, 32).unwrap_err();
    assert!(
        e.contains("read of register `%r2`, which this thread never wrote"),
        "{e}"
    );
}

#[test]
fn local_memory_round_trips_and_is_bounded() {
    let ok = "\tmov.b64 \t%rd1, depot;\n\tst.local.b32 \t[%rd1+12], %r1;\n\tld.local.b32 \t%r2, [%rd1+12];\n\tld.param.b64 \t%rd5, [k_d];\n\tmul.wide.u32 \t%rd2, %r1, 4;\n\tadd.s64 \t%rd3, %rd5, %rd2;\n\tst.global.b32 \t[%rd3], %r2;";
    launch(ok, 4 * 64, 64).unwrap();
    let unwritten = "\tmov.b64 \t%rd1, depot;\n\tst.local.b32 \t[%rd1+4], %r1;\n\tld.local.b32 \t%r2, [%rd1+8];";
    let e = launch(unwritten, 4, 32).unwrap_err();
    assert!(
        e.contains("read of local memory this thread never wrote"),
        "{e}"
    );
    let bad = "\tmov.b64 \t%rd1, depot;\n\tst.local.b32 \t[%rd1+16], %r1;";
    let e = launch(bad, 4, 32).unwrap_err();
    assert!(e.contains("out-of-bounds local write"), "{e}");
}

#[test]
fn an_unimplemented_instruction_is_refused_by_name() {
    let e = launch("\tbrev.b32 \t%r2, %r1;", 4, 32).unwrap_err();
    assert!(
        e.contains("kernel `k`")
            && e.contains("line 13")
            && e.contains("`brev.b32`")
            && e.contains("not implemented"),
        "{e}"
    );
}

#[test]
fn an_endless_loop_stops_at_the_limit() {
    let mut m = Machine::new();
    m.limit = 10_000;
    let id = m
        .load(&module(".param .u64 k_d", "$L_top:\n\tbra.uni \t$L_top;"))
        .unwrap();
    let e = m
        .launch(id, "k", [1, 1, 1], [32, 1, 1], 0, &[0])
        .unwrap_err();
    assert!(e.to_string().contains("endless loop"), "{e}");
}

#[test]
fn the_argument_count_is_checked() {
    let mut m = Machine::new();
    let id = m.load(&module(".param .u64 k_d", "")).unwrap();
    let e = m
        .launch(id, "k", [1, 1, 1], [32, 1, 1], 0, &[])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("launched with 0 arguments; the kernel takes 1"),
        "{e}"
    );
}

#[test]
fn a_non_coherent_load_of_a_buffer_the_kernel_writes_is_located() {
    let read = "\tld.param.b64 \t%rd1, [k_d];\n\tld.global.nc.b32 \t%r2, [%rd1];";
    launch(read, 4, 32).unwrap();
    let e = launch(&format!("{STORE}\n{read}"), 4 * 64, 64).unwrap_err();
    assert!(
        e.contains("ld.global.nc from the allocation") && e.contains("which this kernel writes"),
        "{e}"
    );
}

#[test]
fn launch_limits_are_checked() {
    let mut m = Machine::new();
    let id = m.load(&module(".param .u64 k_d", "")).unwrap();
    let e = m
        .launch(id, "k", [1, 70_000, 1], [32, 1, 1], 0, &[0])
        .unwrap_err();
    assert!(e.to_string().contains("over the limits"), "{e}");
    let e = m
        .launch(id, "k", [1, 1, 1], [2048, 1, 1], 0, &[0])
        .unwrap_err();
    assert!(e.to_string().contains("block"), "{e}");
}

#[test]
fn generic_addresses_reach_each_space() {
    // A shared word written through its generic address (cvta.shared),
    // read back through the shared space; a local one likewise; the
    // result stored through a generic global address.
    let body = "\tmov.b64 \t%rd1, sm;\n\tcvta.shared.u64 \t%rd2, %rd1;\n\tmul.wide.u32 \t%rd3, %r1, 4;\n\tadd.s64 \t%rd4, %rd2, %rd3;\n\tst.b32 \t[%rd4], %r1;\n\tcvta.to.shared.u64 \t%rd5, %rd4;\n\tld.shared.b32 \t%r2, [%rd5];\n\tmov.b64 \t%rd6, depot;\n\tcvta.local.u64 \t%rd7, %rd6;\n\tst.b32 \t[%rd7+4], %r2;\n\tld.local.b32 \t%r3, [%rd6+4];\n\tld.param.b64 \t%rd8, [k_d];\n\tadd.s64 \t%rd9, %rd8, %rd3;\n\tst.b32 \t[%rd9], %r3;";
    let mut m = Machine::new();
    let id = m.load(&module(".param .u64 k_d", body)).unwrap();
    let d = m.mem.alloc(4 * 64);
    m.launch(id, "k", [1, 1, 1], [64, 1, 1], 0, &[d])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = vec![0u8; 4 * 64];
    m.mem.read_into(d, &mut out).unwrap();
    let got: Vec<u32> = out
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..64).collect::<Vec<u32>>());
    // Past the block's shared memory through the generic window.
    let bad = "\tmov.b64 \t%rd1, sm;\n\tcvta.shared.u64 \t%rd2, %rd1;\n\tst.b32 \t[%rd2+256], %r1;";
    let e = launch(bad, 4, 32).unwrap_err();
    assert!(e.contains("out-of-bounds shared write"), "{e}");
}
