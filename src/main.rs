//! `mixc`: the command-line driver.
//!
//! `mixc check FILE...` parses and checks; `mixc run FILE` checks, binds
//! sizes, and runs a mixer on a back end (today: `ref`, the f64 reference
//! interpreter). Errors are rendered like rustc and exit with status 1;
//! usage errors exit with status 2 (clap's convention).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mixc_compiler::Interpreter;
use mixc_dsl::{check_file, render, CheckOptions, Checked, Diagnostic};
use mixc_runtime::Tensor;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "mixc", version, about = "A compiler for sequence mixers", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check .mix files; print diagnostics.
    Check {
        #[arg(required = true)]
        files: Vec<String>,
        /// Override configs: NAME=VALUE[,NAME=VALUE...]
        #[arg(long = "set", value_name = "K=V,...")]
        set: Vec<String>,
        /// Print stages of the pipeline: `ast` (the parse tree) and/or `ir`
        /// (each mixer's IR text), comma-separated.
        #[arg(long, value_name = "ast,ir", value_delimiter = ',')]
        dump: Vec<Stage>,
    },
    /// Optimise a mixer and explain the plan: each kernel, its algorithm,
    /// why it won, and the estimated time on a device.
    Explain {
        file: String,
        #[arg(long)]
        mixer: Option<String>,
        /// Sizes and configs. Unset B, L, D default to 1, 4096, 1024.
        #[arg(long = "set", value_name = "K=V,...")]
        set: Vec<String>,
        #[arg(long, value_enum, default_value_t = Device::H100)]
        device: Device,
        /// For a GPU device: the architecture its bundles target (sm_80 or
        /// sm_90; the profile's own by default) and how they store
        /// activations (f32, bf16, f16; the profile's by default), as `mixc
        /// build --target --dtype`: they decide the attention form and tiles.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
        #[arg(long)]
        json: bool,
        /// Also print the saturated e-graph.
        #[arg(long, value_enum)]
        dump: Option<ExplainDump>,
        /// Also build the GPU bundle (as `mixc build` with the same --set,
        /// --target and --dtype) and estimate each kernel from its machine
        /// code: tensor-, issue- and memory-bound times beside the plan's
        /// roofline floor (needs ptxas and nvdisasm, which
        /// scripts/setup.sh installs).
        #[arg(long)]
        report: bool,
    },
    /// Compile a mixer into a bundle (kernels plus a JSON manifest) for a
    /// target; bundles are cached by content hash.
    Build {
        file: String,
        #[arg(long)]
        mixer: Option<String>,
        /// Sizes and configs fixed at build time. B and L stay run-time
        /// sizes unless set; other unset sizes default (D=64).
        #[arg(long = "set", value_name = "K=V,...")]
        set: Vec<String>,
        /// cpu (a shared library), sm_80 or sm_90 (PTX). With 16-bit
        /// storage, sm_80 computes products on mma.sync (portable PTX) and
        /// sm_90 on wgmma (PTX for sm_90a, which runs on sm_90 GPUs only).
        #[arg(long, default_value = "cpu")]
        target: String,
        /// Copy the bundle here (it always lives in the cache too).
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: Option<String>,
        /// Print each kernel's registers, shared memory and spills (ptxas -v).
        #[arg(long)]
        report: bool,
        /// How buffers are stored: f32, or bf16 / f16 (GPU targets; f32
        /// arithmetic, rounded to nearest-even on every store).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print stages to stdout: kernel (kernel IR), mlir (as emitted,
        /// verified), ptx (GPU targets).
        #[arg(long, value_enum, value_delimiter = ',')]
        dump: Vec<BuildDump>,
        /// Rebuild even if the cache has this bundle.
        #[arg(long)]
        no_cache: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark a mixer against the built-in attention and Hyena (and
    /// PyTorch or JAX peers) across sequence lengths: a correctness line
    /// per mixer, a table, the crossover L, a plot and JSON.
    Bench(bench::Opts),
    /// Measure this machine's f32 FMA peak, memory bandwidth and launch
    /// cost, and cache them as the CPU cost profile that `mixc bench`
    /// (roofline %) and `mixc explain --device cpu` use.
    Calibrate,
    /// Differential testing: random mixers on every execution path
    /// against the interpreter (`--count N` or `--minutes M`), or replay
    /// regression files (`--replay FILE...`).
    Fuzz(fuzz::Opts),
    /// The worker process of `mixc fuzz` (reads jobs on stdin).
    #[command(hide = true)]
    FuzzWorker,
    /// Run a mixer on random input and print a summary of its output.
    Run {
        file: String,
        /// Which mixer of the file (needed when it defines several).
        #[arg(long)]
        mixer: Option<String>,
        /// Sizes and configs: NAME=VALUE[,NAME=VALUE...]. Unset B, L, D
        /// default to 2, 64, 64.
        #[arg(long = "set", value_name = "K=V,...")]
        set: Vec<String>,
        /// Seed for inputs and parameters.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Backend::Ref)]
        backend: Backend,
        /// Also run this back end on the same inputs and print the relative
        /// error of the output against it.
        #[arg(long, value_enum)]
        compare: Option<Backend>,
        /// With `--backend emu`: the GPU target whose bundle runs (sm_80,
        /// sm_90).
        #[arg(long, default_value = "sm_80")]
        target: String,
        /// With `--backend emu`: how the bundle stores activations (f32,
        /// bf16, f16).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Device {
    H100,
    H200,
    Cpu,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BuildDump {
    Kernel,
    Mlir,
    Ptx,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ExplainDump {
    Egraph,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Stage {
    Ast,
    Ir,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// The f64 reference interpreter.
    Ref,
    /// The CPU back end: the host schedule in kernel IR, JIT-compiled
    /// through MLIR and LLVM, f32.
    Cpu,
    /// The GPU bundle `mixc build --target --dtype` writes, run on the
    /// PTX emulator through the runtime's GPU runner (not GPU timing).
    Emu,
}

/// Default sizes for signature dims with these names.
pub(crate) const DEFAULT_SIZES: &[(&str, i64)] = &[("B", 2), ("L", 64), ("D", 64)];

mod bench;
mod build;
mod calibrate;
mod fuzz;
mod machine;
mod plot;

/// The stack of the thread that runs the compiler: the front end, the
/// IR passes, the interpreter and the back ends walk expression trees
/// recursively, and a statement of tens of thousands of terms is a tree
/// that deep. Reserved, not committed: only what a program uses is
/// touched. (rustc runs its compiler on a large-stack thread too.)
const COMPILER_STACK: usize = 4 << 30;

fn main() -> ExitCode {
    match std::thread::Builder::new()
        .name("mixc".into())
        .stack_size(COMPILER_STACK)
        .spawn(compiler_main)
    {
        Ok(h) => h.join().unwrap_or(ExitCode::from(101)),
        Err(e) => {
            eprintln!("error: cannot start the compiler thread: {e}");
            ExitCode::from(1)
        }
    }
}

fn compiler_main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Check { files, set, dump } => cmd_check(&files, &set, &dump),
        Command::Explain {
            file,
            mixer,
            set,
            device,
            target,
            dtype,
            json,
            dump,
            report,
        } => cmd_explain(
            &file,
            mixer.as_deref(),
            &set,
            (device, target.as_deref(), dtype.as_deref()),
            json,
            dump,
            report,
        ),
        Command::Build {
            file,
            mixer,
            set,
            target,
            out,
            report,
            dtype,
            dump,
            no_cache,
            json,
        } => mixc_runtime::Dtype::parse(&dtype)
            .map_err(|m| anyhow!("--dtype: {m}"))
            .and_then(|dtype| {
                cmd_build(
                    &build::Request {
                        file: &file,
                        text: None,
                        mixer: mixer.as_deref(),
                        set: &set,
                        target: &target,
                        use_cache: !no_cache,
                        dtype,
                        dump: build::Dump {
                            kernel: dump.contains(&BuildDump::Kernel),
                            mlir: dump.contains(&BuildDump::Mlir),
                            ptx: dump.contains(&BuildDump::Ptx),
                        },
                    },
                    out.as_deref(),
                    report,
                    json,
                )
            }),
        Command::Bench(mut opts) => bench::parse_seq(&opts.seq_text).and_then(|seq| {
            opts.seq = seq;
            bench::run(&opts)
        }),
        Command::Calibrate => calibrate::run().map(|()| ExitCode::SUCCESS),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::FuzzWorker => fuzz::worker(),
        Command::Run {
            file,
            mixer,
            set,
            seed,
            backend,
            compare,
            target,
            dtype,
            json,
        } => mixc_runtime::Dtype::parse(&dtype)
            .map_err(|m| anyhow!("--dtype: {m}"))
            .and_then(|dtype| {
                let emu = EmuRun {
                    file: &file,
                    mixer: mixer.as_deref(),
                    set: &set,
                    seed,
                    target: &target,
                    dtype,
                };
                cmd_run(
                    &file,
                    mixer.as_deref(),
                    &set,
                    seed,
                    backend,
                    compare,
                    json,
                    &emu,
                )
            }),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub(crate) fn parse_set(items: &[String]) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for item in items {
        for kv in item.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("--set expects NAME=VALUE, got `{kv}`"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("--set {k}: `{v}` is not a number"))?;
            out.insert(k.trim().to_string(), v);
        }
    }
    Ok(out)
}

pub(crate) fn load(file: &str, opts: &CheckOptions) -> Result<Checked> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read `{file}`"))?;
    Ok(check_file(file, &text, opts))
}

pub(crate) fn print_diagnostics(c: &Checked) {
    if !c.diagnostics.is_empty() {
        eprint!("{}", render(&c.sources, &c.diagnostics));
    }
}

fn cmd_check(files: &[String], set: &[String], dump: &[Stage]) -> Result<ExitCode> {
    let opts = CheckOptions {
        overrides: parse_set(set)?,
    };
    let mut failed = 0;
    for f in files {
        let c = match load(f, &opts) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
                continue;
            }
        };
        print_diagnostics(&c);
        if dump.contains(&Stage::Ast) {
            let (tree, _) = mixc_dsl::parse::parse_file(&c.sources.get(0).text, 0);
            print!("{}", mixc_dsl::pretty::file(&tree));
        }
        if dump.contains(&Stage::Ir) {
            for p in &c.programs {
                print!(
                    "{}",
                    mixc_compiler::ir::text::print(&mixc_compiler::ir::lower::lower(p))
                );
            }
        }
        if c.has_errors() {
            let n = c.diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!("error: {f}: {n} error{}", if n == 1 { "" } else { "s" });
            failed += 1;
        } else {
            let names: Vec<&str> = c.programs.iter().map(|p| p.name.as_str()).collect();
            println!(
                "ok: {f} (mixers: {})",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            );
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Binds the free sizes of a program from `--set` and defaults; rejects
/// `--set` keys that name neither a config nor a free size.
pub(crate) fn resolve_sizes(
    c: &Checked,
    prog: &mixc_dsl::typed::Program,
    set: &BTreeMap<String, f64>,
    defaults: &[(&str, i64)],
) -> Result<BTreeMap<String, i64>> {
    let free: Vec<&str> = prog.free_dims();
    let mut sizes = BTreeMap::new();
    for (k, v) in set {
        if c.used_overrides.contains(k) {
            continue;
        }
        if free.contains(&k.as_str()) {
            if v.fract() != 0.0 || *v < 1.0 {
                bail!("--set {k}={v}: sizes are positive integers");
            }
            sizes.insert(k.clone(), *v as i64);
        } else if let Some(d) = prog.dims.iter().find(|d| d.name == *k) {
            let value = d.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            bail!("--set {k}: `{k}` is derived ({k} = {value}); set what it is computed from");
        } else {
            let configs: Vec<&str> = prog.configs.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "--set {k}: mixer `{}` has no config or size named `{k}` (sizes: {}; configs: {})",
                prog.name,
                free.join(", "),
                if configs.is_empty() {
                    "none".to_string()
                } else {
                    configs.join(", ")
                }
            );
        }
    }
    for name in &free {
        if !sizes.contains_key(*name) {
            match defaults.iter().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    sizes.insert(name.to_string(), *v);
                }
                None => bail!("size `{name}` has no value; pass it with --set {name}=N"),
            }
        }
    }
    Ok(sizes)
}

const EXPLAIN_SIZES: &[(&str, i64)] = &[("B", 1), ("L", 4096), ("D", 1024)];

/// A plan and what it was made for.
struct Planned {
    plan: mixc_opt::Plan,
    profile: mixc_opt::Profile,
    gpu: Option<mixc_compiler::schedule::Gpu>,
    /// `--set` for `mixc build` to make the bundle of these kernels: the
    /// free sizes a bundle fixes, at the plan's values (the batch and
    /// sequence sizes stay run-time).
    build_set: Vec<String>,
}

/// The optimiser's plan for a mixer at `set` (unset B, L, D at
/// [`EXPLAIN_SIZES`]) on `device`, for a GPU's `target` and `dtype`;
/// `None` after printing the program's errors.
fn make_plan(
    file: &str,
    mixer: Option<&str>,
    set: &[String],
    (device, target, dtype): (Device, Option<&str>, Option<&str>),
    diagnostics: bool,
) -> Result<Option<Planned>> {
    let set = parse_set(set)?;
    let c = load(
        file,
        &CheckOptions {
            overrides: set.clone(),
        },
    )?;
    if diagnostics || c.has_errors() {
        print_diagnostics(&c);
    }
    if c.has_errors() {
        return Ok(None);
    }
    let prog = c.program(mixer).map_err(|e| anyhow!(e))?;
    let sizes = resolve_sizes(&c, prog, &set, EXPLAIN_SIZES)?;
    let module = mixc_compiler::ir::lower::lower(prog);
    let all = match mixc_compiler::bind_sizes(&module, &sizes) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{}", render(&c.sources, &[e.to_diagnostic()]));
            return Ok(None);
        }
    };
    let run_time = module.run_time_sizes();
    let mut build_set: Vec<String> = set
        .iter()
        .filter(|(k, _)| !prog.free_dims().contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for d in prog.free_dims() {
        if let (false, Some(v)) = (run_time.iter().any(|r| r == d), sizes.get(d)) {
            build_set.push(format!("{d}={v}"));
        }
    }
    let profile = match device {
        Device::H100 => mixc_opt::Profile::named("h100").map_err(|e| anyhow!(e))?,
        Device::H200 => mixc_opt::Profile::named("h200").map_err(|e| anyhow!(e))?,
        // The measured profile where `mixc calibrate` (or a bench) cached
        // one for this machine, else the nominal one.
        Device::Cpu => calibrate::host_profile(false)?,
    };
    let gpu = match (device, target, dtype) {
        (Device::Cpu, None, None) => None,
        (Device::Cpu, ..) => bail!("--target and --dtype are for a GPU device"),
        (_, t, d) => {
            let sm = t.map_or_else(
                || format!("sm_{}", profile.sm.unwrap_or(90)),
                str::to_string,
            );
            let d = mixc_runtime::Dtype::parse(d.unwrap_or(&profile.dtype))
                .map_err(|m| anyhow!("--dtype: {m}"))?;
            let g = mixc_compiler::schedule::Gpu::parse(&sm, d).ok_or_else(|| {
                anyhow!("--target: `{sm}` is not a GPU architecture (sm_80, sm_90)")
            })?;
            Some(g)
        }
    };
    let plan = mixc_opt::optimize_for(&module, &all, &profile, gpu).map_err(|e| anyhow!(e))?;
    Ok(Some(Planned {
        plan,
        profile,
        gpu,
        build_set,
    }))
}

/// `ptxas -v` and `nvdisasm` on a GPU bundle's PTX: each kernel's report,
/// in the manifest's order, and the architecture it assembled for.
fn gpu_reports(built: &build::Built) -> Result<(Vec<mixc_backends::KernelReport>, String)> {
    let m = &built.bundle.manifest;
    let ptx = std::fs::read_to_string(built.bundle.object_path())?;
    let mut r = mixc_backends::ptxas_report(&ptx, &m.target).map_err(|e| anyhow!("{e}"))?;
    let order = |name: &str| m.kernels.iter().position(|k| k.entry == name);
    r.sort_by_key(|k| order(&k.name));
    Ok((r, mixc_backends::ptx_arch(&ptx, &m.target).to_string()))
}

fn cmd_explain(
    file: &str,
    mixer: Option<&str>,
    set: &[String],
    (device, target, dtype): (Device, Option<&str>, Option<&str>),
    json: bool,
    dump: Option<ExplainDump>,
    report: bool,
) -> Result<ExitCode> {
    let Some(Planned {
        plan,
        profile,
        gpu,
        build_set,
    }) = make_plan(file, mixer, set, (device, target, dtype), true)?
    else {
        return Ok(ExitCode::from(1));
    };
    let machine = match (report, gpu) {
        (false, _) => None,
        (true, None) => bail!(
            "--report estimates GPU kernels from their machine code: use a GPU device (--device h100 or h200)"
        ),
        (true, Some(g)) => {
            let sm = g.sm_name();
            let Some(built) = build::build(&build::Request {
                file,
                text: None,
                mixer,
                set: &build_set,
                target: &sm,
                use_cache: true,
                dtype: g.dtype,
                dump: build::Dump::default(),
            })?
            else {
                return Ok(ExitCode::from(1));
            };
            let (reports, _) = gpu_reports(&built)?;
            Some(machine::rows(&plan, &reports, &built.bundle.manifest, &profile))
        }
    };
    if json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(rows) = &machine {
            v["machine"] = serde_json::to_value(rows)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", plan.render());
        if let Some(rows) = &machine {
            print!("\n{}", machine::render(rows, &profile, &plan));
        }
    }
    if dump == Some(ExplainDump::Egraph) {
        print!("\ne-graph:\n{}", plan.egraph_dump);
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_build(
    req: &build::Request,
    out: Option<&str>,
    report: bool,
    json: bool,
) -> Result<ExitCode> {
    let Some(built) = build::build(req)? else {
        return Ok(ExitCode::from(1));
    };
    let m = &built.bundle.manifest;
    let dir = match out {
        Some(o) => {
            let o = std::path::Path::new(o);
            build::copy_dir(&built.bundle.dir, o)
                .with_context(|| format!("cannot write the bundle to {}", o.display()))?;
            o.to_path_buf()
        }
        None => built.bundle.dir.clone(),
    };
    let reports = if report && m.target.starts_with("sm_") {
        Some(gpu_reports(&built)?)
    } else {
        None
    };
    // The machine-code estimate, on the H100 profile, at the sizes `mixc
    // explain` takes for those the bundle leaves to run time.
    let machine = match &reports {
        Some((r, _)) => make_plan(
            req.file,
            req.mixer,
            req.set,
            (Device::H100, Some(&m.target), Some(req.dtype.name())),
            false,
        )?
        .map(|p| {
            let rows = machine::rows(&p.plan, r, m, &p.profile);
            let text = machine::render(&rows, &p.profile, &p.plan);
            (rows, text)
        }),
        None => None,
    };
    let free = built.bundle.free_sizes();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir.display().to_string(),
                "hash": m.hash,
                "cached": built.cached,
                "seconds": built.seconds,
                "manifest": m,
                "report": reports.as_ref().map(|r| &r.0),
                "arch": reports.as_ref().map(|r| &r.1),
                "machine": machine.as_ref().map(|m| &m.0),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "built {} ({}) for {} in {:.1} ms{} -> {}",
        m.mixer,
        m.source,
        m.target,
        built.seconds * 1e3,
        if built.cached { " (cached)" } else { "" },
        dir.display()
    );
    let fixed: Vec<String> = m
        .sizes
        .iter()
        .filter_map(|s| s.value.as_ref().map(|v| format!("{}={v}", s.name)))
        .collect();
    println!(
        "  {} kernels, {} buffers, {}; run-time sizes: {}; fixed: {}",
        m.kernels.len(),
        m.values.len(),
        m.object,
        if free.is_empty() {
            "none".into()
        } else {
            free.join(", ")
        },
        if fixed.is_empty() {
            "none".into()
        } else {
            fixed.join(", ")
        }
    );
    if report && !m.target.starts_with("sm_") {
        println!(
            "  --report: ptxas reports apply to GPU targets (sm_80, sm_90); this is a CPU bundle"
        );
    }
    if let Some((reports, arch)) = &reports {
        println!(
            "  {:<8} {:>9} {:>10} {:>7} {:>12} {:>11}",
            "kernel", "registers", "smem (B)", "stack", "spill st (B)", "spill ld (B)"
        );
        for r in reports {
            println!(
                "  {:<8} {:>9} {:>10} {:>7} {:>12} {:>11}",
                r.name, r.registers, r.shared_bytes, r.stack_bytes, r.spill_stores, r.spill_loads
            );
        }
        let mut notes: Vec<&String> = reports.iter().flat_map(|r| &r.warnings).collect();
        notes.dedup();
        for n in notes {
            println!("  ptxas: {n}");
        }
        let spills: u32 = reports.iter().map(|r| r.spill_stores + r.spill_loads).sum();
        println!(
            "  ptxas -arch={arch}: {} kernels, {} spill bytes",
            reports.len(),
            spills
        );
        print_sass(reports, m);
        if let Some((_, text)) = &machine {
            print!(
                "{}",
                text.lines().map(|l| format!("  {l}\n")).collect::<String>()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `build --report`'s machine-code table: each kernel's hot loop as its
/// SASS shows it (`mixc_backends::sass`) and its occupancy.
fn print_sass(reports: &[mixc_backends::KernelReport], m: &mixc_runtime::bundle::Manifest) {
    use mixc_backends::sass;
    if reports.iter().all(|r| r.sass.is_none()) {
        println!(
            "  SASS: nvdisasm not found at {} (run scripts/setup.sh)",
            sass::nvdisasm_path().display()
        );
        return;
    }
    let widths = |w: &BTreeMap<u32, u32>| -> String {
        if w.is_empty() {
            return "-".into();
        }
        w.iter()
            .map(|(b, n)| format!("{n}x{b}B"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  SASS (nvdisasm; hot loop: the innermost loop with tensor instructions, else the largest innermost one; instructions per warp per iteration, nested loops once):"
    );
    println!(
        "  {:<8} {:>6} {:>9} {:>7} {:>7} {:>8} {:<22} {:<16} {:<16} {:>9} {:>14}",
        "kernel",
        "instrs",
        "loop",
        "tensor",
        "t-cyc",
        "ceiling",
        "global loads",
        "shared stores",
        "shared loads",
        "int div",
        "blocks/SM"
    );
    for r in reports {
        let Some(x) = &r.sass else { continue };
        let threads = m
            .kernels
            .iter()
            .find(|k| k.entry == r.name)
            .and_then(|k| k.block)
            .map(|b| b.iter().product::<u32>())
            .unwrap_or(1);
        let (blocks, by) = sass::occupancy(&m.target, r.registers, r.shared_bytes, threads);
        let occ = format!("{blocks} ({by})");
        match &x.hot_loop {
            Some(l) => println!(
                "  {:<8} {:>6} {:>9} {:>7} {:>7} {:>8} {:<22} {:<16} {:<16} {:>9} {:>14}",
                r.name,
                x.instructions,
                format!(
                    "{}{}",
                    l.instructions,
                    if l.nested > 0 {
                        format!("+{}n", l.nested)
                    } else {
                        String::new()
                    }
                ),
                l.tensor,
                l.tensor_cycles,
                l.ceiling()
                    .map(|c| format!("{:.1}%", c * 100.0))
                    .unwrap_or_else(|| "-".into()),
                widths(&l.global_loads),
                widths(&l.shared_stores),
                format!(
                    "{}{}",
                    widths(&l.shared_loads),
                    if l.ldmatrix > 0 {
                        format!(" {}xLDSM", l.ldmatrix)
                    } else {
                        String::new()
                    }
                ),
                format!("{}/{}", l.int_div_inline, l.int_div_calls),
                occ
            ),
            None => println!(
                "  {:<8} {:>6} {:>9} {:>7} {:>7} {:>8} {:<22} {:<16} {:<16} {:>9} {:>14}",
                r.name,
                x.instructions,
                "no loop",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                format!("{}/{}", x.int_div_inline, x.int_div_calls),
                occ
            ),
        }
    }
    println!(
        "  (ceiling: the hot loop's tensor cycles over its issue cycles on one scheduler; int div: inline reciprocal sequences / calls to 64-bit division)"
    );
}

/// FLOPs of every op evaluated as written, by the cost model's count, on
/// the module `mixc explain` starts from (heavy sums split into ops of
/// their own, so a sum an expression uses twice, as in `phi(sum(d) ..)`,
/// counts once, and sibling sums do not multiply).
fn executed_flops(m: &mixc_compiler::ir::Module, sizes: &BTreeMap<String, i64>) -> f64 {
    let Ok(profile) = mixc_opt::Profile::named("cpu") else {
        return 0.0;
    };
    let split = mixc_compiler::ir::split::split_heavy(m);
    let m = &split;
    let ctx = mixc_opt::cost::Ctx {
        m,
        sizes,
        profile: &profile,
        tiles: Default::default(),
    };
    (0..m.ops.len())
        .map(|o| ctx.direct(o, &mixc_opt::lang::operands(m, o)).flops())
        .sum()
}

/// A back end's output, its run time and (for compiled ones) compile time.
type BackendRun = (Tensor, f64, Option<f64>);

/// What `--backend emu` builds and runs: the GPU bundle of the file's
/// mixer for a target and storage type, with the run's seed.
struct EmuRun<'a> {
    file: &'a str,
    mixer: Option<&'a str>,
    set: &'a [String],
    seed: u64,
    target: &'a str,
    dtype: mixc_runtime::Dtype,
}

/// Builds the GPU bundle exactly as `mixc build` does and runs it on the
/// PTX emulator through the runtime's runner, computed buffers poisoned
/// (a value no kernel writes shows as NaN); inputs and parameters come
/// from the seed as the interpreter's do.
fn run_emu(it: &Interpreter, e: &EmuRun) -> Result<BackendRun> {
    let built = build::build(&build::Request {
        file: e.file,
        text: None,
        mixer: e.mixer,
        set: e.set,
        target: e.target,
        use_cache: true,
        dtype: e.dtype,
        dump: build::Dump::default(),
    })?
    .ok_or_else(|| anyhow!("the {} bundle was not built", e.target))?;
    if !built.bundle.manifest.target.starts_with("sm_") {
        bail!("--backend emu runs GPU bundles: use --target sm_80 or sm_90");
    }
    let mut r = mixc_runtime::runner::Runner::for_bundle_on(
        built.bundle,
        mixc_runtime::runner::Device::Emu,
    )
    .map_err(|m| anyhow!(m))?;
    let free: BTreeMap<String, i64> = r
        .bundle()
        .free_sizes()
        .into_iter()
        .filter_map(|s| it.sizes.get(&s).map(|v| (s, *v)))
        .collect();
    let start = Instant::now();
    r.prepare_poisoned(&free, e.seed).map_err(|m| anyhow!(m))?;
    r.run().map_err(|m| anyhow!(m))?;
    let out = r.output().map_err(|m| anyhow!(m))?;
    let t = Tensor {
        shape: it.output().shape.clone(),
        data: out.iter().map(|x| *x as f64).collect(),
    };
    // No compile time: the GFLOP/s line it brings would describe the
    // emulator, not the bundle.
    Ok((t, start.elapsed().as_secs_f64(), None))
}

/// Runs one back end on the interpreter's inputs and parameters. The inner
/// error is a program error with a span (rendered by the caller); the
/// outer one a back-end failure.
fn run_backend(
    it: &mut Interpreter,
    backend: Backend,
    emu: &EmuRun,
) -> Result<Result<BackendRun, mixc_compiler::InterpError>> {
    Ok(match backend {
        Backend::Emu => Ok(run_emu(it, emu)?),
        Backend::Ref => {
            let start = Instant::now();
            if let Err(e) = it.run() {
                return Ok(Err(e));
            }
            Ok((it.output().clone(), start.elapsed().as_secs_f64(), None))
        }
        Backend::Cpu => {
            let m = it.module().clone();
            let mut buffers: Vec<Vec<f32>> = it
                .tensors
                .iter()
                .map(|t| t.data.iter().map(|x| *x as f32).collect())
                .collect();
            let r = mixc_backends::host::run(&m, &it.sizes, &mut buffers)
                .map_err(|e| anyhow!("{e}"))?;
            let out = &buffers[m.output.0 as usize];
            let shape = it.output().shape.clone();
            let t = Tensor {
                shape,
                data: out.iter().map(|x| *x as f64).collect(),
            };
            Ok((t, r.run_seconds, Some(r.compile_seconds)))
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn cmd_run(
    file: &str,
    mixer: Option<&str>,
    set: &[String],
    seed: u64,
    backend: Backend,
    compare: Option<Backend>,
    json: bool,
    emu: &EmuRun,
) -> Result<ExitCode> {
    let set = parse_set(set)?;
    let opts = CheckOptions {
        overrides: set.clone(),
    };
    let c = load(file, &opts)?;
    print_diagnostics(&c);
    if c.has_errors() {
        return Ok(ExitCode::from(1));
    }
    let prog = c.program(mixer).map_err(|e| anyhow!(e))?;
    let sizes = resolve_sizes(&c, prog, &set, DEFAULT_SIZES)?;

    let fail = |e: mixc_compiler::InterpError| -> Result<ExitCode> {
        let d: Diagnostic = e.to_diagnostic();
        eprint!("{}", render(&c.sources, &[d]));
        Ok(ExitCode::from(1))
    };
    let mut it = match Interpreter::new(prog, &sizes) {
        Ok(it) => it,
        Err(e) => return fail(e),
    };
    if let Err(e) = it.init(seed) {
        return fail(e);
    }
    let (out, wall, compile) = match run_backend(&mut it, backend, emu)? {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let compared = match compare {
        Some(other) => {
            let mut again = match Interpreter::new(prog, &sizes) {
                Ok(it) => it,
                Err(e) => return fail(e),
            };
            if let Err(e) = again.init(seed) {
                return fail(e);
            }
            match run_backend(&mut again, other, emu)? {
                Ok((o, _, _)) => Some((other, mixc_runtime::rel_err(&out.data, &o.data))),
                Err(e) => return fail(e),
            }
        }
        None => None,
    };
    let wall = std::time::Duration::from_secs_f64(wall);
    let flops = executed_flops(it.module(), &it.sizes);
    let out = &out;
    let stats = out.stats();
    let out_name = &prog.tensor(prog.output).name;
    let name_of = |b: Backend| match b {
        Backend::Ref => "ref",
        Backend::Cpu => "cpu",
        Backend::Emu => "emu",
    };
    let backend_name = name_of(backend);
    let emu_what = format!(
        "{} {} bundle on the PTX emulator, not GPU timing",
        emu.target, emu.dtype
    );
    let what = match backend {
        Backend::Ref => "f64 reference interpreter",
        Backend::Cpu => "kernel IR, host JIT, f32",
        Backend::Emu => &emu_what,
    };
    if json {
        let v = serde_json::json!({
            "file": file,
            "mixer": prog.name,
            "backend": backend_name,
            "seed": seed,
            "sizes": it.sizes,
            "configs": prog.configs.iter().map(|c| (c.name.clone(), c.value)).collect::<BTreeMap<_, _>>(),
            "output": out_name,
            "shape": out.shape,
            "mean": stats.mean,
            "std": stats.std,
            "checksum": stats.checksum,
            "nonfinite": stats.nonfinite,
            "wall_ms": wall.as_secs_f64() * 1e3,
            "compile_ms": compile.map(|c| c * 1e3),
            "gflop": flops / 1e9,
            // The emulator's rate says nothing about the bundle.
            "gflops": (!matches!(backend, Backend::Emu))
                .then(|| flops / wall.as_secs_f64().max(1e-12) / 1e9),
            "compare": compared.map(|(b, e)| serde_json::json!({"backend": name_of(b), "rel_err": e})),
        });
        println!("{v}");
    } else {
        let bold = |s: &str| {
            if std::io::stdout().is_terminal() {
                format!("\x1b[1m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let sizes_s: Vec<String> = it.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{} {} ({file}) on backend {backend_name} ({what}), seed {seed}",
            bold("mixer"),
            prog.name
        );
        println!("  sizes     {}", sizes_s.join(" "));
        if !prog.configs.is_empty() {
            let cfg: Vec<String> = prog
                .configs
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect();
            println!("  configs   {}", cfg.join(" "));
        }
        println!("  output    {out_name}: {:?}", out.shape);
        println!("  mean      {:+.6e}", stats.mean);
        println!("  std       {:.6e}", stats.std);
        println!("  checksum  {:+.12e}", stats.checksum);
        println!("  time      {:.1} ms", wall.as_secs_f64() * 1e3);
        if let Some(c) = compile {
            println!("  compile   {:.1} ms", c * 1e3);
            println!(
                "  rate      {:.2} GFLOP/s executed ({:.3} GFLOP, every op as written)",
                flops / wall.as_secs_f64().max(1e-12) / 1e9,
                flops / 1e9
            );
        }
        if let Some((b, e)) = compared {
            println!("  vs {:<6} relative error {e:.3e}", name_of(b));
        }
    }
    if stats.nonfinite > 0 {
        eprintln!(
            "warning: the output has {} non-finite value{} (NaN or infinity)",
            stats.nonfinite,
            if stats.nonfinite == 1 { "" } else { "s" }
        );
    }
    if let Some((other, err)) = compared {
        // The emulator runs a bundle that stores `--dtype`.
        let dtype = if matches!(backend, Backend::Emu) || matches!(other, Backend::Emu) {
            emu.dtype
        } else {
            mixc_runtime::Dtype::F32
        };
        return Ok(judge_comparison(
            prog,
            &sizes,
            seed,
            (backend_name, name_of(other)),
            err,
            dtype,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The verdict of `--compare`: over the tolerance of the storage type (f32
/// for the compiled host back ends, the bundle's `--dtype` for the
/// emulator; `mixc_runtime::Dtype::tolerance`) is an error, exit status 1.
/// When rounding the inputs to that type alone moves the
/// interpreter's output by a quarter of the tolerance or more, the
/// program is ill-conditioned at these inputs, and the message says so.
fn judge_comparison(
    prog: &mixc_dsl::typed::Program,
    sizes: &BTreeMap<String, i64>,
    seed: u64,
    (a, b): (&str, &str),
    err: f64,
    dtype: mixc_runtime::Dtype,
) -> ExitCode {
    if a == b {
        return ExitCode::SUCCESS;
    }
    let tol = dtype.tolerance();
    let shape = mixc_fuzz::Shape {
        sizes: sizes.clone(),
    };
    let floor = mixc_fuzz::exec::reference(prog, &shape, seed)
        .map(|r| r.rounding_floor(dtype))
        .unwrap_or(0.0);
    let ill = floor * 4.0 > tol;
    if ill {
        eprintln!(
            "warning: the mixer is ill-conditioned at these inputs: {dtype} rounding of its inputs, parameters and intermediate results alone moves the interpreter's output by {floor:.3e} (relative); {dtype} results cannot be expected within {tol:.0e}"
        );
    }
    if err.is_nan() || err > tol {
        eprintln!(
            "error: {a} and {b} differ by {err:.3e} (relative), over the {dtype} tolerance {tol:.0e}{}",
            if ill {
                " (see the warning above)"
            } else {
                ": a miscompile; please report it with this file and command"
            }
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
