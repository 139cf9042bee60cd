//! `mixc bench`: the user's mixer against the built-in attention and Hyena
//! (and PyTorch or JAX peers) across sequence lengths, in one command.
//!
//! For each mixer: build its bundle (cached), check it against the
//! interpreter at a small shape (outputs poisoned with NaN first), then
//! time it at every `L` with warm-up and repetitions (median, min, max).
//! Counting follows PERFORMANCE.md: useful FLOPs come from the plan (masked
//! pairs not counted), bytes are the plan's device-memory traffic, and the
//! roofline floor is the plan's estimated time on this device's profile.
//! A shape that would not fit in memory or would take longer than the
//! budget is skipped with its reason; the sweep goes on.

use crate::build::{self, Request};
use crate::plot;
use anyhow::{anyhow, bail, Context, Result};
use mixc_dsl::{render, CheckOptions};
use mixc_runtime::bundle::Timing;
use mixc_runtime::runner::Runner;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// `mixc bench`'s options.
#[derive(clap::Args)]
pub struct Opts {
    pub file: String,
    #[arg(long)]
    pub mixer: Option<String>,
    /// Built-ins (attention, hyena) and peers (torch, jax) to compare with.
    #[arg(long, value_delimiter = ',', default_value = "attention,hyena")]
    pub vs: Vec<String>,
    /// Sequence lengths: 256,1k,4k,16k (k = 1024).
    #[arg(long = "seq", value_name = "L,...", default_value = "256,1k,4k")]
    pub seq_text: Vec<String>,
    /// Batch size B.
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Model width D, for every mixer that has it.
    #[arg(long, default_value_t = 64)]
    pub dim: i64,
    /// Heads H, for every mixer with an `H` config.
    #[arg(long)]
    pub heads: Option<i64>,
    /// Storage type: f32, or bf16 / f16 on a GPU (f32 arithmetic). The
    /// correctness tolerance follows it (1e-4 for f32, 1e-2 otherwise)
    /// and so do the byte counts; peers run in the same type.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// auto (a CUDA GPU if there is one, else the CPU), cuda or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Timed repetitions per point (after warm-up).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Write every row, check and crossover as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write the log-log plot as FILE.svg and FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<String>,
    /// Sizes and configs for the benchmarked mixer.
    #[arg(long = "set", value_name = "K=V,...")]
    pub set: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time budget per point; longer points are skipped with a reason.
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// The lengths, parsed from `--seq` (by [`parse_seq`]) before [`run`].
    #[arg(skip)]
    pub seq: Vec<i64>,
}

/// `1k` = 1024, `16k`, `1m` = 1048576, or a plain number.
pub fn parse_seq(items: &[String]) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for item in items {
        for t in item.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let lower = t.to_ascii_lowercase();
            let (num, mult) = if let Some(n) = lower.strip_suffix('k') {
                (n, 1024)
            } else if let Some(n) = lower.strip_suffix('m') {
                (n, 1024 * 1024)
            } else {
                (lower.as_str(), 1)
            };
            let v: i64 = num
                .parse()
                .map_err(|_| anyhow!("--seq: `{t}` is not a length (like 512, 4k, 1m)"))?;
            if v < 1 {
                bail!("--seq: `{t}` must be at least 1");
            }
            out.push(v * mult);
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        bail!("--seq needs at least one length");
    }
    Ok(out)
}

/// One mixer of the comparison.
struct Entry {
    label: String,
    file: String,
    text: Option<&'static str>,
    mixer: Option<String>,
    set: Vec<String>,
    builtin: bool,
}

#[derive(Clone, Debug, Serialize)]
struct Check {
    mixer: String,
    batch: i64,
    seq: i64,
    rel_err: f64,
    tolerance: f64,
    ok: bool,
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    mixer: String,
    /// `mixc` or the peer's framework.
    source: String,
    seq: i64,
    batch: i64,
    status: String,
    reason: Option<String>,
    median_s: Option<f64>,
    min_s: Option<f64>,
    max_s: Option<f64>,
    reps: usize,
    tokens_per_s: Option<f64>,
    useful_flops: Option<f64>,
    useful_tflops_per_s: Option<f64>,
    bytes: Option<f64>,
    gb_per_s: Option<f64>,
    floor_s: Option<f64>,
    roofline_pct: Option<f64>,
    memory_bytes: Option<u64>,
    /// Time of each built-in at this `L` divided by this mixer's.
    speedup: BTreeMap<String, f64>,
    /// Per kernel, as `mixc explain` names it: the plan's estimate on the
    /// device profile and the measured median (per-call kernels).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kernels: Vec<KernelTime>,
}

/// One kernel's estimated and measured time.
#[derive(Clone, Debug, Serialize)]
struct KernelTime {
    id: usize,
    name: String,
    schedule: String,
    estimated_s: f64,
    measured_s: Option<f64>,
}

impl Row {
    fn skipped(mixer: &str, source: &str, seq: i64, batch: i64, reason: String) -> Row {
        Row {
            status: "skipped".into(),
            reason: Some(reason),
            ..Row::empty(mixer, source, seq, batch)
        }
    }

    /// A measured row with the time and tokens/s; counts left empty.
    fn timed(mixer: &str, source: &str, seq: i64, batch: i64, t: Timing) -> Row {
        Row {
            status: "ok".into(),
            median_s: Some(t.median),
            min_s: Some(t.min),
            max_s: Some(t.max),
            reps: t.reps,
            tokens_per_s: Some((batch * seq) as f64 / t.median),
            ..Row::empty(mixer, source, seq, batch)
        }
    }

    fn empty(mixer: &str, source: &str, seq: i64, batch: i64) -> Row {
        Row {
            mixer: mixer.into(),
            source: source.into(),
            seq,
            batch,
            status: String::new(),
            reason: None,
            median_s: None,
            min_s: None,
            max_s: None,
            reps: 0,
            tokens_per_s: None,
            useful_flops: None,
            useful_tflops_per_s: None,
            bytes: None,
            gb_per_s: None,
            floor_s: None,
            roofline_pct: None,
            memory_bytes: None,
            speedup: BTreeMap::new(),
            kernels: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Crossover {
    mixer: String,
    against: String,
    /// The first measured `L` from which the mixer is faster at every
    /// longer measured `L`.
    from_seq: Option<i64>,
    /// The log-log interpolated crossing between the last slower and the
    /// first faster measured `L`.
    estimate: Option<f64>,
    note: String,
}

/// Memory the host can still give, from /proc/meminfo.
fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn builtin(name: &str) -> Option<Entry> {
    let (file, mixer) = match name {
        "attention" => ("std/attention.mix", "attention"),
        "hyena" => ("std/hyena.mix", "hyena"),
        _ => return None,
    };
    let (_, _, text) = mixc_dsl::stdlib::MODULES
        .iter()
        .find(|(_, path, _)| *path == file)?;
    Some(Entry {
        label: name.into(),
        file: file.into(),
        text: Some(text),
        mixer: Some(mixer.into()),
        set: Vec::new(),
        builtin: true,
    })
}

/// The `--set` for one mixer: the shared shape (D, H) where the mixer has
/// that size or config, plus the user's own settings for the user's mixer.
fn settings_for(e: &Entry, opts: &Opts) -> Result<Option<(Vec<String>, String)>> {
    let user = crate::parse_set(&e.set)?;
    let c = check_entry(e, &e.set)?;
    crate::print_diagnostics(&c);
    if c.has_errors() {
        return Ok(None);
    }
    let prog = c.program(e.mixer.as_deref()).map_err(|m| anyhow!(m))?;
    let mut set = e.set.clone();
    if prog.free_dims().contains(&"D") && !user.contains_key("D") {
        set.push(format!("D={}", opts.dim));
    }
    if let Some(h) = opts.heads {
        if prog.configs.iter().any(|c| c.name == "H") && !user.contains_key("H") {
            set.push(format!("H={h}"));
        }
    }
    Ok(Some((set, prog.name.clone())))
}

/// The names of a mixer's batch and sequence sizes, from the IR's size
/// roles (the first input's first two axes), whatever the user called
/// them; `B` and `L` where the first input has no such plain size.
fn role_names(prog: &mixc_dsl::typed::Program) -> (String, String) {
    use mixc_compiler::ir::SizeRole;
    let m = mixc_compiler::ir::lower::lower(prog);
    let name = |role, fallback: &str| {
        m.size_with_role(role)
            .map(str::to_string)
            .unwrap_or_else(|| fallback.to_string())
    };
    (name(SizeRole::Batch, "B"), name(SizeRole::Sequence, "L"))
}

/// Interpreter against the bundle at a small shape, computed buffers
/// poisoned with NaN before the run.
fn correctness(e: &Entry, set: &[String], runner: &mut Runner, seq: i64, seed: u64) -> Result<f64> {
    let overrides = crate::parse_set(set)?;
    let c = check_entry(e, set)?;
    let prog = c.program(e.mixer.as_deref()).map_err(|m| anyhow!(m))?;
    let (b, l) = role_names(prog);
    let sizes = crate::resolve_sizes(&c, prog, &overrides, &[(b.as_str(), 1), (l.as_str(), seq)])?;
    let mut it = match mixc_compiler::Interpreter::new(prog, &sizes) {
        Ok(it) => it,
        Err(err) => bail!("{}", render(&c.sources, &[err.to_diagnostic()])),
    };
    it.init(seed)
        .map_err(|err| anyhow!("{}", render(&c.sources, &[err.to_diagnostic()])))?;
    it.run()
        .map_err(|err| anyhow!("{}", render(&c.sources, &[err.to_diagnostic()])))?;
    let want = it.output().data.clone();
    let run_free: BTreeMap<String, i64> = runner
        .bundle()
        .free_sizes()
        .into_iter()
        .filter_map(|n| sizes.get(&n).map(|v| (n, *v)))
        .collect();
    runner
        .prepare_poisoned(&run_free, seed)
        .map_err(|m| anyhow!(m))?;
    runner.run().map_err(|m| anyhow!(m))?;
    let got: Vec<f64> = runner
        .output()
        .map_err(|m| anyhow!(m))?
        .iter()
        .map(|x| *x as f64)
        .collect();
    Ok(mixc_runtime::rel_err(&got, &want))
}

/// Checks an entry's source with `set`, from disk or the embedded std.
fn check_entry(e: &Entry, set: &[String]) -> Result<mixc_dsl::Checked> {
    let text = match e.text {
        Some(t) => t.to_string(),
        None => {
            std::fs::read_to_string(&e.file).with_context(|| format!("cannot read `{}`", e.file))?
        }
    };
    let overrides = crate::parse_set(set)?;
    Ok(mixc_dsl::check_file(
        &e.file,
        &text,
        &CheckOptions { overrides },
    ))
}

/// The user mixer's attention mask as a Python expression for a PyTorch
/// `mask_mod`, when it has one that can be written so.
fn user_mask(e: &Entry, set: &[String], bundle: &mixc_runtime::bundle::Bundle) -> Option<String> {
    let c = check_entry(e, set).ok()?;
    let prog = c.program(e.mixer.as_deref()).ok()?;
    let module = mixc_compiler::ir::lower::lower(prog);
    // Sizes fixed at build time and not derived from L.
    let mut free = BTreeMap::new();
    for n in bundle.free_sizes() {
        free.insert(n, 1);
    }
    let bound = bundle.bind(&free).ok()?;
    let fixed: BTreeMap<String, i64> = bundle
        .manifest
        .sizes
        .iter()
        .filter(|s| {
            s.value
                .as_ref()
                .is_some_and(|v| !v.contains('L') && !v.contains('B'))
        })
        .filter_map(|s| Some((s.name.clone(), *bound.sizes.get(&s.name)?)))
        .collect();
    mixc_backends::attention::mask_python(&module, &fixed)
}

/// The plan's counts at one shape: useful FLOPs, bytes, its estimated
/// time (the floor) on `profile`, and each kernel's estimate.
fn plan_counts(
    bundle: &mixc_runtime::bundle::Bundle,
    e: &Entry,
    set: &[String],
    free: &BTreeMap<String, i64>,
    profile: &mixc_opt::Profile,
) -> Option<(f64, f64, f64, Vec<mixc_opt::Kernel>)> {
    let c = check_entry(e, set).ok()?;
    let prog = c.program(e.mixer.as_deref()).ok()?;
    let module = mixc_compiler::ir::lower::lower(prog);
    let bound = bundle.bind(free).ok()?;
    let plan = mixc_opt::optimize(&module, &bound.sizes, profile).ok()?;
    let per_call = plan.kernels.iter().filter(|k| k.per_call);
    let (flops, bytes) = per_call.fold((0.0, 0.0), |(f, b), k| {
        (f + k.useful_flops, b + k.work.bytes)
    });
    Some((flops, bytes, plan.total_seconds, plan.kernels))
}

/// Each per-call kernel's estimate beside its measured median, matched by
/// id, schedule and written value (the plan and the manifest list the same
/// kernels; where they do not, nothing is reported rather than a wrong
/// pairing).
fn kernel_times(runner: &mut Runner, planned: &[mixc_opt::Kernel]) -> Vec<KernelTime> {
    let Ok(measured) = runner.profile(3) else {
        return Vec::new();
    };
    let m = &runner.bundle().manifest;
    let same = m.kernels.len() == planned.len()
        && m.kernels.iter().zip(planned).all(|(k, p)| {
            k.id == p.id
                && k.schedule == p.schedule
                && m.values.get(k.writes).is_some_and(|v| v.name == p.name)
        });
    if !same {
        return Vec::new();
    }
    planned
        .iter()
        .zip(measured)
        .filter(|(p, _)| p.per_call)
        .map(|(p, t)| KernelTime {
            id: p.id,
            name: p.name.clone(),
            schedule: p.schedule.clone(),
            estimated_s: p.seconds,
            measured_s: t,
        })
        .collect()
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

fn fmt_seq(l: i64) -> String {
    if l >= 1024 && l % 1024 == 0 {
        format!("{}k", l / 1024)
    } else {
        l.to_string()
    }
}

pub fn run(opts: &Opts) -> Result<ExitCode> {
    let dtype = mixc_runtime::Dtype::parse(&opts.dtype).map_err(|m| anyhow!("--dtype: {m}"))?;
    // The device: a CUDA GPU when asked or found, else the CPU.
    let (device, target, gpu_name) = match opts.device.as_str() {
        "cpu" => ("cpu", "cpu".to_string(), None),
        "cuda" => {
            let (name, sm) = mixc_runtime::cuda::device_info().map_err(|m| anyhow!(m))?;
            ("cuda", gpu_target(&sm), Some(name))
        }
        "auto" => match mixc_runtime::cuda::device_info() {
            Ok((name, sm)) => ("cuda", gpu_target(&sm), Some(name)),
            Err(why) => {
                eprintln!("note: --device auto: {why}; benchmarking on the CPU");
                ("cpu", "cpu".to_string(), None)
            }
        },
        other => bail!("--device {other}: expected auto, cuda or cpu"),
    };
    if dtype != mixc_runtime::Dtype::F32 && device == "cpu" {
        bail!(
            "--dtype {dtype}: bf16 and f16 storage run on a GPU (sm_80, sm_90); the CPU backend stores f32 (use --dtype f32, or --device cuda on a machine with a GPU)"
        );
    }
    let mut profile = if device == "cuda" {
        mixc_opt::Profile::named("h100").map_err(|m| anyhow!(m))?
    } else {
        crate::calibrate::host_profile(true)?
    };
    // Bytes moved are counted in the storage type actually run.
    profile.dtype_bytes = dtype.bytes() as f64;
    let tolerance = dtype.tolerance();

    let mut entries = vec![Entry {
        label: String::new(),
        file: opts.file.clone(),
        text: None,
        mixer: opts.mixer.clone(),
        set: opts.set.clone(),
        builtin: false,
    }];
    let mut peers = Vec::new();
    for v in &opts.vs {
        match v.as_str() {
            "torch" | "jax" => peers.push(v.clone()),
            name => match builtin(name) {
                Some(e) => entries.push(e),
                None => bail!(
                    "--vs {name}: known built-ins are attention and hyena; peers are torch and jax"
                ),
            },
        }
    }
    let mut sets = Vec::new();
    for e in entries.iter_mut() {
        let Some((set, name)) = settings_for(e, opts)? else {
            return Ok(ExitCode::from(1));
        };
        if e.label.is_empty() {
            e.label = name;
        }
        sets.push(set);
    }
    // The user's mixer may share a built-in's name (benchmarking std
    // itself): name it by its file too, so rows and speedups stay distinct.
    if entries[1..].iter().any(|b| b.label == entries[0].label) {
        entries[0].label = format!("{} ({})", entries[0].label, entries[0].file);
    }
    let builtins: Vec<String> = entries
        .iter()
        .filter(|e| e.builtin)
        .map(|e| e.label.clone())
        .collect();

    let device_name = gpu_name
        .clone()
        .unwrap_or_else(|| format!("cpu ({} threads)", mixc_runtime::cpu::host_threads()));
    println!(
        "mixc bench: {} on {device_name}, target {target}, {dtype}, B={}, D={}{}, seqs {}",
        entries
            .iter()
            .map(|e| e.label.as_str())
            .collect::<Vec<_>>()
            .join(" vs "),
        opts.batch,
        opts.dim,
        opts.heads.map(|h| format!(", H={h}")).unwrap_or_default(),
        opts.seq
            .iter()
            .map(|l| fmt_seq(*l))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("profile     {}: {}", profile.name, profile.description);

    // Build, then check each against the interpreter.
    let mut runners = Vec::new();
    let mut checks = Vec::new();
    let mut failed = false;
    let check_seq = opts.seq[0].min(64);
    for (e, set) in entries.iter().zip(&sets) {
        let req = Request {
            file: &e.file,
            text: e.text,
            mixer: e.mixer.as_deref(),
            set,
            target: &target,
            use_cache: true,
            dtype,
            dump: Default::default(),
        };
        let Some(built) = build::build(&req)? else {
            return Ok(ExitCode::from(1));
        };
        println!(
            "build       {:<18} {} in {}{}",
            e.label,
            target,
            fmt_time(built.seconds),
            if built.cached { " (cached)" } else { "" }
        );
        let mut runner = Runner::for_bundle(built.bundle).map_err(|m| anyhow!(m))?;
        let rel = correctness(e, set, &mut runner, check_seq, opts.seed)?;
        let ok = rel < tolerance;
        failed |= !ok;
        println!(
            "correctness {:<18} B=1 L={check_seq}: relative error {rel:.2e} against the interpreter (tolerance {tolerance:.0e}) {}",
            e.label,
            if ok { "ok" } else { "FAILED" }
        );
        checks.push(Check {
            mixer: e.label.clone(),
            batch: 1,
            seq: check_seq,
            rel_err: rel,
            tolerance,
            ok,
        });
        runners.push(runner);
    }

    // The user's mask, for the peers that can take one (flex_attention).
    let mask = user_mask(&entries[0], &sets[0], runners[0].bundle());
    if let Some(m) = &mask {
        println!("mask        {} for the peers: {m}", entries[0].label);
    }

    // The sweep.
    let total = (entries.len() * opts.seq.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut last: Vec<Option<(i64, f64)>> = vec![None; entries.len()];
    for &l in &opts.seq {
        for (k, e) in entries.iter().enumerate() {
            bar.set_message(format!("{} L={}", e.label, fmt_seq(l)));
            let row = measure(
                e,
                &sets[k],
                &mut runners[k],
                l,
                opts,
                &profile,
                &mut last[k],
                device,
            );
            bar.inc(1);
            rows.push(row);
        }
    }
    bar.finish_and_clear();

    // Peers.
    let mut peer_notes = Vec::new();
    for p in &peers {
        match peers::run(
            p,
            device,
            opts,
            mask.as_deref().map(|m| (entries[0].label.as_str(), m)),
        ) {
            Ok(mut r) => rows.append(&mut r),
            Err(why) => {
                println!("peers       {p}: skipped: {why}");
                peer_notes.push(format!("{p}: {why}"));
            }
        }
    }

    // Speedups against each built-in at the same L.
    let time_of = |rows: &[Row], name: &str, l: i64| {
        rows.iter()
            .find(|r| r.mixer == name && r.seq == l && r.source == "mixc")
            .and_then(|r| r.median_s)
    };
    let snapshot = rows.clone();
    for r in rows.iter_mut() {
        if let Some(t) = r.median_s {
            for b in &builtins {
                if let Some(tb) = time_of(&snapshot, b, r.seq) {
                    r.speedup.insert(b.clone(), tb / t);
                }
            }
        }
    }

    print_table(&rows, &builtins);
    // Per kernel, at each mixer's longest measured L: explain's names, the
    // estimate on the device profile and the measured median.
    let mut shown: Vec<&str> = Vec::new();
    for r in rows.iter().rev().filter(|r| !r.kernels.is_empty()) {
        if shown.contains(&r.mixer.as_str()) {
            continue;
        }
        shown.push(&r.mixer);
        println!("kernels     {} at L={}:", r.mixer, fmt_seq(r.seq));
        for k in &r.kernels {
            println!(
                "              kernel {} {} [{}]: estimated {}, measured {}",
                k.id,
                k.name,
                k.schedule,
                fmt_time(k.estimated_s),
                k.measured_s.map_or("-".into(), fmt_time)
            );
        }
    }

    // Crossovers: the user's mixer against each built-in.
    let user = entries[0].label.clone();
    let mut crossovers = Vec::new();
    for b in &builtins {
        if *b == user {
            continue;
        }
        let pairs: Vec<(i64, f64, f64)> = opts
            .seq
            .iter()
            .filter_map(|l| Some((*l, time_of(&rows, &user, *l)?, time_of(&rows, b, *l)?)))
            .collect();
        let c = crossover(&user, b, &pairs);
        println!("crossover   {}", c.note);
        crossovers.push(c);
    }

    // Plot and JSON.
    let mut written = Vec::new();
    if let Some(p) = &opts.plot {
        let mut series = Vec::new();
        let mut names: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let key = (r.mixer.clone(), r.source.clone());
            if !names.contains(&key) {
                names.push(key);
            }
        }
        for (name, source) in names {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.mixer == name && r.source == source)
                .filter_map(|r| Some((r.seq as f64, r.median_s?)))
                .collect();
            if !points.is_empty() {
                series.push(plot::Series {
                    label: if source == "mixc" {
                        name
                    } else {
                        format!("{source}: {name}")
                    },
                    points,
                    peer: source != "mixc",
                });
            }
        }
        let title = format!(
            "{} on {device_name} (B={}, D={}, {dtype})",
            user, opts.batch, opts.dim
        );
        match plot::write(std::path::Path::new(p), &title, &series) {
            Ok(files) => written.extend(files),
            Err(why) => eprintln!("warning: no plot: {why:#}"),
        }
    }
    if let Some(path) = &opts.json {
        let v = serde_json::json!({
            "device": device_name,
            "target": target,
            "dtype": opts.dtype,
            "batch": opts.batch,
            "dim": opts.dim,
            "heads": opts.heads,
            "seqs": opts.seq,
            "reps": opts.reps,
            "warmup": opts.warmup,
            "correctness": checks,
            "rows": rows,
            "crossovers": crossovers,
            "peers_skipped": peer_notes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("cannot write {path}"))?;
        written.push(path.clone());
    }
    if !written.is_empty() {
        println!("wrote       {}", written.join(", "));
    }
    if failed {
        eprintln!("error: a mixer's output does not match the interpreter (see the correctness lines); its timings are not trustworthy");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The bundle target for a GPU of compute capability `sm`: sm_90 (whose
/// 16-bit kernels use `wgmma`, PTX for sm_90a, which runs on sm_90 alone)
/// on an sm_90 GPU, sm_80 (`mma.sync`, portable PTX) on the others.
fn gpu_target(sm: &str) -> String {
    let n: u32 = sm.trim_start_matches("sm_").parse().unwrap_or(80);
    if n == 90 {
        "sm_90".into()
    } else {
        "sm_80".into()
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    e: &Entry,
    set: &[String],
    runner: &mut Runner,
    l: i64,
    opts: &Opts,
    profile: &mixc_opt::Profile,
    last: &mut Option<(i64, f64)>,
    device: &str,
) -> Row {
    let mut free = BTreeMap::new();
    let (b_name, l_name) = check_entry(e, set)
        .ok()
        .and_then(|c| c.program(e.mixer.as_deref()).ok().map(role_names))
        .unwrap_or_else(|| ("B".into(), "L".into()));
    for n in runner.bundle().free_sizes() {
        if n == b_name {
            free.insert(n, opts.batch);
        } else if n == l_name {
            free.insert(n, l);
        }
    }
    let skip = |why: String| Row::skipped(&e.label, "mixc", l, opts.batch, why);
    let bound = match runner.bundle().bind(&free) {
        Ok(b) => b,
        Err(why) => return skip(why),
    };
    if device == "cpu" {
        if let Some(avail) = host_available_bytes() {
            if bound.bytes() as f64 > 0.8 * avail as f64 {
                return skip(format!(
                    "out of memory: needs {}, {} available",
                    fmt_bytes(bound.bytes()),
                    fmt_bytes(avail)
                ));
            }
        }
    }
    // Predict from the last measured L, quadratically (attention's worst
    // case), and skip what would overrun the budget.
    let runs = (opts.warmup + opts.reps) as f64;
    if let Some((l0, t0)) = *last {
        let predicted = t0 * (l as f64 / l0 as f64).powi(2) * runs;
        if predicted > opts.max_seconds {
            return skip(format!(
                "out of time: about {} for {} runs, over --max-seconds {}",
                fmt_time(predicted),
                runs,
                opts.max_seconds
            ));
        }
    }
    if let Err(why) = runner.prepare(&free, opts.seed) {
        return skip(why);
    }
    // One run first: a single call over the budget stops here.
    let t = std::time::Instant::now();
    if let Err(why) = runner.run() {
        return skip(why);
    }
    let first = t.elapsed().as_secs_f64();
    let (warmup, reps) = if first * runs > opts.max_seconds {
        (0, ((opts.max_seconds / first) as usize).clamp(1, opts.reps))
    } else {
        (opts.warmup.saturating_sub(1), opts.reps)
    };
    let timing: Timing = match runner.time(warmup, reps) {
        Ok(t) => t,
        Err(why) => return skip(why),
    };
    *last = Some((l, timing.median));
    let counts = plan_counts(runner.bundle(), e, set, &free, profile);
    let kernels = counts
        .as_ref()
        .map(|c| kernel_times(runner, &c.3))
        .unwrap_or_default();
    let t = timing.median;
    Row {
        kernels,
        useful_flops: counts.as_ref().map(|c| c.0),
        useful_tflops_per_s: counts.as_ref().map(|c| c.0 / t / 1e12),
        bytes: counts.as_ref().map(|c| c.1),
        gb_per_s: counts.as_ref().map(|c| c.1 / t / 1e9),
        floor_s: counts.as_ref().map(|c| c.2),
        roofline_pct: counts.as_ref().map(|c| 100.0 * c.2 / t),
        memory_bytes: Some(runner.memory_bytes()),
        ..Row::timed(&e.label, "mixc", l, opts.batch, timing)
    }
}

fn crossover(user: &str, against: &str, pairs: &[(i64, f64, f64)]) -> Crossover {
    // pairs: (L, user time, built-in time)
    let faster: Vec<bool> = pairs.iter().map(|(_, u, b)| u < b).collect();
    let from = (0..pairs.len()).find(|&k| faster[k..].iter().all(|f| *f));
    let mut c = Crossover {
        mixer: user.into(),
        against: against.into(),
        from_seq: from.map(|k| pairs[k].0),
        estimate: None,
        note: String::new(),
    };
    if pairs.is_empty() {
        c.note = format!("{user} vs {against}: no length measured for both");
        return c;
    }
    c.note = match from {
        Some(0) => format!(
            "{user} beats {against} at every measured L (from L={})",
            fmt_seq(pairs[0].0)
        ),
        Some(k) => {
            // Interpolate log(t_user / t_builtin) linearly in log L.
            let (l0, u0, b0) = pairs[k - 1];
            let (l1, u1, b1) = pairs[k];
            let (r0, r1) = ((u0 / b0).ln(), (u1 / b1).ln());
            let x = (l0 as f64).ln() + (l1 as f64 / l0 as f64).ln() * r0 / (r0 - r1);
            c.estimate = Some(x.exp());
            format!(
                "{user} beats {against} from L={} on (crossing near L~{:.0}, log-log interpolated)",
                fmt_seq(l1),
                x.exp()
            )
        }
        None => format!(
            "{user} does not beat {against} from any measured L on (up to L={})",
            fmt_seq(pairs[pairs.len() - 1].0)
        ),
    };
    c
}

fn print_table(rows: &[Row], builtins: &[String]) {
    let name_of = |r: &Row| {
        if r.source == "mixc" {
            r.mixer.clone()
        } else {
            format!("{}: {}", r.source, r.mixer)
        }
    };
    let w = rows
        .iter()
        .map(|r| name_of(r).len())
        .max()
        .unwrap_or(0)
        .max(22);
    let mut head = format!(
        "\n{:<w$} {:>6} {:>10} {:>21} {:>11} {:>9} {:>8} {:>9} {:>10}",
        "mixer", "L", "median", "min..max", "tokens/s", "TFLOP/s", "GB/s", "roofline", "memory"
    );
    for b in builtins {
        head.push_str(&format!(" {:>12}", format!("vs {b}")));
    }
    println!("{head}");
    for r in rows {
        let name = name_of(r);
        let Some(t) = r.median_s else {
            println!(
                "{:<w$} {:>6} skipped: {}",
                name,
                fmt_seq(r.seq),
                r.reason.clone().unwrap_or_default()
            );
            continue;
        };
        let opt =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        let mut line = format!(
            "{:<w$} {:>6} {:>10} {:>21} {:>11} {:>9} {:>8} {:>9} {:>10}",
            name,
            fmt_seq(r.seq),
            fmt_time(t),
            format!(
                "{}..{}",
                fmt_time(r.min_s.unwrap_or(t)),
                fmt_time(r.max_s.unwrap_or(t))
            ),
            opt(r.tokens_per_s, &|v| format!("{v:.3e}")),
            opt(r.useful_tflops_per_s, &|v| format!("{v:.4}")),
            opt(r.gb_per_s, &|v| format!("{v:.2}")),
            opt(r.roofline_pct, &|v| {
                format!("{v:.2}%{}", if v > 100.0 { "*" } else { "" })
            }),
            r.memory_bytes.map(fmt_bytes).unwrap_or_else(|| "-".into()),
        );
        for b in builtins {
            line.push_str(&format!(
                " {:>12}",
                r.speedup
                    .get(b)
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        println!("{line}");
    }
    if rows
        .iter()
        .any(|r| r.roofline_pct.is_some_and(|v| v > 100.0))
    {
        println!(
            "* over 100%: the run beat the plan's estimate, so at that size the estimate is no floor (it counts the profile's launch cost for every kernel, which dominates small shapes)"
        );
    }
    println!();
}

/// Running the shipped peer scripts (`scripts/peers/*.py`, embedded in the
/// binary) with python3, and reading their JSON lines into rows.
mod peers {
    use super::{Opts, Row, Timing};
    use std::process::Command;

    const TORCH: &str = include_str!("../scripts/peers/torch_peers.py");
    const JAX: &str = include_str!("../scripts/peers/jax_peers.py");

    pub fn run(
        which: &str,
        device: &str,
        opts: &Opts,
        mask: Option<(&str, &str)>,
    ) -> Result<Vec<Row>, String> {
        let (script, module) = match which {
            "torch" => (TORCH, "torch"),
            "jax" => {
                if device != "cpu" {
                    return Err("the JAX peer runs on the CPU only (use --device cpu)".into());
                }
                (JAX, "jax")
            }
            other => return Err(format!("unknown peer `{other}`")),
        };
        let dir = crate::build::cache_dir().join("peers");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{which}_peers.py"));
        std::fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
        let seqs: Vec<String> = opts.seq.iter().map(|l| l.to_string()).collect();
        let mut cmd = Command::new("python3");
        cmd.arg(&path);
        // The peers `scripts/setup.sh` installs into the project's tool
        // folder (JAX on the CPU) come first.
        let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/python");
        if tools.is_dir() {
            let mut paths = vec![tools];
            if let Some(p) = std::env::var_os("PYTHONPATH") {
                paths.extend(std::env::split_paths(&p));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PYTHONPATH", joined);
            }
        }
        if let Some((name, expr)) = mask {
            cmd.args(["--mask", expr, "--mask-name", name]);
        }
        let out = cmd
            .args(["--device", device])
            .args(["--seq", &seqs.join(",")])
            .args(["--batch", &opts.batch.to_string()])
            .args(["--dim", &opts.dim.to_string()])
            .args(["--heads", &opts.heads.unwrap_or(8).to_string()])
            .args(["--reps", &opts.reps.to_string()])
            .args(["--warmup", &opts.warmup.to_string()])
            .args(["--dtype", &opts.dtype])
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A script that dies part way (a peer killed for memory) still
        // gave the rows before it: they are kept, and the death is a row.
        let died = match out.status.code() {
            Some(0) => None,
            Some(3) => return Err(format!("python3 has no {module} ({})", stderr.trim())),
            code => Some(format!(
                "the {which} peer script died ({}) after the rows above: {}",
                code.map_or("killed by a signal".to_string(), |c| format!("status {c}")),
                stderr.lines().last().unwrap_or("").trim()
            )),
        };
        let mut rows = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let name = v["mixer"].as_str().unwrap_or("?").to_string();
            let seq = v["seq"].as_i64().unwrap_or(0);
            if let Some(why) = v["skipped"].as_str() {
                rows.push(Row::skipped(&name, which, seq, opts.batch, why.to_string()));
                continue;
            }
            let Some(t) = v["median_s"].as_f64() else {
                continue;
            };
            let timing = Timing {
                median: t,
                min: v["min_s"].as_f64().unwrap_or(t),
                max: v["max_s"].as_f64().unwrap_or(t),
                reps: v["reps"].as_u64().unwrap_or(0) as usize,
            };
            rows.push(Row::timed(&name, which, seq, opts.batch, timing));
        }
        if let Some(why) = died {
            if rows.is_empty() {
                return Err(why);
            }
            let seq = rows.last().map_or(0, |r: &Row| r.seq);
            rows.push(Row::skipped(
                &format!("{which} peer"),
                which,
                seq,
                opts.batch,
                why,
            ));
        }
        Ok(rows)
    }
}
