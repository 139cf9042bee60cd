//! `mixc fuzz`: differential-testing campaigns.
//!
//! The driver hands seeds to worker processes (`mixc fuzz-worker`, one per
//! job slot), so a crash, an abort or a hang in a back end costs one case,
//! not the campaign: a worker that dies is recorded as a crash of its
//! case and restarted, one that does not answer within the timeout is
//! killed and its case recorded as a hang. Failing cases are shrunk (in a
//! worker too) and, with `--save DIR`, written as regression files in the
//! corpus format (`mixc_fuzz::corpus`).

use anyhow::{anyhow, Result};
use mixc_fuzz::{corpus, exec::Path, gen, shrink, Invalid};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Opts {
    /// First seed of the campaign.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of programs to generate.
    #[arg(long)]
    pub count: Option<u64>,
    /// Run for this many minutes (open-ended campaign).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Paths to run, comma-separated (default: all). Each program runs on
    /// cpu, mlir, one optimiser profile and two of the six simulator
    /// configurations, rotating with the seed.
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// The CI budget's rotation: each program on three paths (cpu or
    /// mlir, one simulator configuration, one optimiser profile) instead
    /// of five.
    #[arg(long)]
    pub quick: bool,
    /// Shrink failing programs (each within --shrink-seconds).
    #[arg(long)]
    pub shrink: bool,
    #[arg(long, default_value_t = 60)]
    pub shrink_seconds: u64,
    /// Write each failure, shrunk when --shrink is given, as a regression
    /// file in this directory.
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
    /// Seconds a case may run before it counts as a hang.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print the program and sizes of this seed, and exit.
    #[arg(long)]
    pub print: Option<u64>,
    /// Run these regression files instead of a campaign.
    #[arg(long, num_args = 1..)]
    pub replay: Vec<String>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn parse_paths(names: &[String]) -> Result<Vec<Path>> {
    if names.is_empty() {
        return Ok(Path::all());
    }
    names
        .iter()
        .map(|n| Path::parse(n).map_err(|e| anyhow!(e)))
        .collect()
}

/// The worker: one JSON job per line on stdin, one JSON result per line on
/// stdout. A job is `{"seed": S, "paths": [..]}` (run the generated case)
/// or `{"seed": S, "shrink": PATH, "class": CLASS, "budget": SECONDS}`.
pub fn worker() -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let job: Value = serde_json::from_str(&line)?;
        let seed = job["seed"]
            .as_u64()
            .ok_or_else(|| anyhow!("job without a seed"))?;
        let case = gen::case(seed);
        let reply = if let Some(path) = job["shrink"].as_str() {
            let path = Path::parse(path).map_err(|e| anyhow!(e))?;
            let class = match job["class"].as_str().unwrap_or("") {
                "mismatch" => "mismatch",
                "panic" => "panic",
                "refused" => "refused",
                c => return Err(anyhow!("cannot shrink class `{c}`")),
            };
            let t = shrink::Target { path, class, seed };
            let budget = Duration::from_secs(job["budget"].as_u64().unwrap_or(60));
            let (p, s) = shrink::shrink(&case.program, &case.shape, &t, budget);
            json!({"seed": seed, "src": p.text(), "shape": s.text()})
        } else {
            let paths: Vec<Path> = job["paths"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str())
                        .filter_map(|p| Path::parse(p).ok())
                        .collect()
                })
                .unwrap_or_default();
            let src = case.program.text();
            let o = mixc_fuzz::run_source(&src, &case.shape, seed, &paths);
            let invalid = o.invalid.as_ref().map(|i| match i {
                Invalid::Check(m) => json!({"kind": "check", "msg": m}),
                Invalid::Interp(m) => json!({"kind": "interp", "msg": m}),
                Invalid::NonFinite => json!({"kind": "nonfinite", "msg": ""}),
            });
            let verdicts: Vec<Value> = o
                .verdicts
                .iter()
                .map(|(p, v)| json!({"path": p.name(), "class": v.class(), "detail": v.describe()}))
                .collect();
            json!({"seed": seed, "invalid": invalid, "verdicts": verdicts})
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr_file: std::path::PathBuf,
}

impl Worker {
    fn spawn(slot: usize) -> Result<Worker> {
        let exe = std::env::current_exe()?;
        let stderr_file =
            std::env::temp_dir().join(format!("mixc-fuzz-{}-{slot}.stderr", std::process::id()));
        let err = std::fs::File::create(&stderr_file)?;
        let mut child = Command::new(exe)
            .arg("fuzz-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no worker stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no worker stdout"))?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines: rx,
            stderr_file,
        })
    }

    /// Sends `job`; the reply, or why there is none.
    fn ask(&mut self, job: &Value, timeout: Duration) -> Result<Value, String> {
        if writeln!(self.stdin, "{job}")
            .and_then(|_| self.stdin.flush())
            .is_err()
        {
            return Err(format!("crash: the worker is gone{}", self.stderr_tail()));
        }
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).map_err(|e| format!("crash: bad reply {e}")),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!("hang: no answer in {} s", timeout.as_secs()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "crash: the worker died ({status}){}",
                    self.stderr_tail()
                ))
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(6).collect();
        if lines.is_empty() {
            String::new()
        } else {
            let mut l = lines;
            l.reverse();
            format!(": {}", l.join(" | "))
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_file);
    }
}

#[derive(Default)]
struct Summary {
    programs: u64,
    invalid: BTreeMap<&'static str, u64>,
    /// Per path: verdict class -> count.
    per_path: BTreeMap<String, BTreeMap<String, u64>>,
    failures: Vec<String>,
    /// First check rejections, to show the generator's misses.
    rejects: Vec<String>,
}

fn campaign(o: &Opts) -> Result<ExitCode> {
    let allowed = parse_paths(&o.paths)?;
    if o.count.is_none() && o.minutes.is_none() {
        return Err(anyhow!("give --count N or --minutes M"));
    }
    if let Some(dir) = &o.save {
        std::fs::create_dir_all(dir)?;
    }
    let deadline = o
        .minutes
        .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let end = o.count.map(|c| o.seed + c).unwrap_or(u64::MAX);
    let next = Arc::new(Mutex::new(o.seed));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let start = Instant::now();
    let timeout = Duration::from_secs(o.timeout);
    let mut threads = Vec::new();
    for slot in 0..o.jobs.max(1) {
        let next = next.clone();
        let summary = summary.clone();
        let allowed = allowed.clone();
        let save = o.save.clone();
        let (shrink_on, shrink_s, quick) = (o.shrink, o.shrink_seconds, o.quick);
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut w = Worker::spawn(slot)?;
            loop {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Ok(());
                }
                let seed = {
                    let mut n = next.lock().unwrap();
                    if *n >= end {
                        return Ok(());
                    }
                    *n += 1;
                    *n - 1
                };
                let paths = if quick {
                    mixc_fuzz::quick_paths_for(seed, &allowed)
                } else {
                    mixc_fuzz::paths_for(seed, &allowed)
                };
                let names: Vec<String> = paths.iter().map(|p| p.name()).collect();
                let job = json!({"seed": seed, "paths": names});
                let reply = w.ask(&job, timeout);
                let mut to_shrink = None;
                {
                    let mut s = summary.lock().unwrap();
                    s.programs += 1;
                    match &reply {
                        Err(why) => {
                            let kind = if why.starts_with("hang") { "hang" } else { "crash" };
                            s.failures.push(format!("seed {seed}: {why}"));
                            *s.invalid.entry(kind).or_default() += 1;
                        }
                        Ok(r) if !r["invalid"].is_null() => {
                            let kind = match r["invalid"]["kind"].as_str() {
                                Some("check") => "rejected by the checker",
                                Some("interp") => "interpreter error",
                                _ => "non-finite reference",
                            };
                            *s.invalid.entry(kind).or_default() += 1;
                            if kind.starts_with("rejected") && s.rejects.len() < 5 {
                                let msg = r["invalid"]["msg"].as_str().unwrap_or("");
                                s.rejects.push(format!(
                                    "seed {seed}: {}",
                                    msg.lines().take(3).collect::<Vec<_>>().join(" / ")
                                ));
                            }
                        }
                        Ok(r) => {
                            for v in r["verdicts"].as_array().into_iter().flatten() {
                                let path = v["path"].as_str().unwrap_or("?").to_string();
                                let class = v["class"].as_str().unwrap_or("?").to_string();
                                *s.per_path.entry(path.clone()).or_default().entry(class.clone()).or_default() += 1;
                                if matches!(class.as_str(), "mismatch" | "panic" | "refused") {
                                    let detail = v["detail"].as_str().unwrap_or("");
                                    s.failures.push(format!("seed {seed} on {path}: {detail}"));
                                    if to_shrink.is_none() {
                                        to_shrink = Some((path, class));
                                    }
                                }
                            }
                        }
                    }
                }
                if reply.is_err() {
                    w = Worker::spawn(slot)?;
                }
                if let Some((path, class)) = to_shrink {
                    let case = gen::case(seed);
                    let (src, shape) = if shrink_on {
                        let job = json!({"seed": seed, "shrink": path, "class": class, "budget": shrink_s});
                        match w.ask(&job, Duration::from_secs(shrink_s * 3 + 60)) {
                            Ok(r) => (
                                r["src"].as_str().unwrap_or("").to_string(),
                                gen::Shape::parse(r["shape"].as_str().unwrap_or("")).unwrap_or(case.shape.clone()),
                            ),
                            Err(_) => {
                                w = Worker::spawn(slot)?;
                                (case.program.text(), case.shape.clone())
                            }
                        }
                    } else {
                        (case.program.text(), case.shape.clone())
                    };
                    if let Some(dir) = &save {
                        let p = Path::parse(&path).map_err(|e| anyhow!(e))?;
                        let text = corpus::file(
                            &format!("seed {seed}: {class} on {path}"),
                            &src,
                            &shape,
                            seed,
                            &[p],
                            "ok",
                        );
                        let file = dir.join(format!("seed-{seed}.mix"));
                        std::fs::write(&file, text)?;
                        summary.lock().unwrap().failures.push(format!("  saved {}", file.display()));
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("a driver thread panicked"))??;
    }
    let s = summary.lock().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let valid = s.programs - s.invalid.values().sum::<u64>();
    println!(
        "fuzz: {} programs from seed {} in {secs:.1} s ({:.1} programs/s), {valid} run on the paths",
        s.programs,
        o.seed,
        s.programs as f64 / secs.max(1e-9)
    );
    for (k, n) in &s.invalid {
        println!("  not run: {n} {k}");
    }
    for r in &s.rejects {
        println!("    {r}");
    }
    println!(
        "  {:<16} {:>6} {:>6} {:>9} {:>8} {:>6} {:>16}",
        "path", "runs", "ok", "mismatch", "refused", "panic", "ill-conditioned"
    );
    let mut runs_total = 0;
    for (p, c) in &s.per_path {
        let g = |k: &str| c.get(k).copied().unwrap_or(0);
        let runs: u64 = c.values().sum();
        runs_total += runs;
        println!(
            "  {p:<16} {runs:>6} {:>6} {:>9} {:>8} {:>6} {:>16}",
            g("ok"),
            g("mismatch"),
            g("refused"),
            g("panic"),
            g("ill-conditioned")
        );
    }
    println!("  {runs_total} path runs");
    let failed = s
        .failures
        .iter()
        .filter(|f| !f.starts_with("  saved"))
        .count();
    for f in &s.failures {
        println!("  FAIL {f}");
    }
    if let Some(file) = &o.json {
        let v = json!({
            "programs": s.programs,
            "valid": valid,
            "seconds": secs,
            "invalid": s.invalid,
            "per_path": s.per_path,
            "failures": s.failures,
        });
        std::fs::write(file, serde_json::to_string_pretty(&v)?)?;
    }
    println!("{} passed, {failed} failed", valid);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn replay(files: &[String]) -> Result<ExitCode> {
    let bless = std::env::var("MIXC_BLESS").is_ok_and(|v| v == "1");
    let mut failed = 0;
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow!("{f}: {e}"))?;
        let e = corpus::parse(&text).map_err(|m| anyhow!("{f}: {m}"))?;
        match corpus::run(&e) {
            Ok(_) => println!("ok    {f}"),
            Err((observed, why)) if bless => {
                std::fs::write(f, corpus::bless(&text, &observed))?;
                println!("bless {f}: {observed} ({why})");
            }
            Err((_, why)) => {
                failed += 1;
                println!("FAIL  {f}\n{why}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn run(o: &Opts) -> Result<ExitCode> {
    if let Some(seed) = o.print {
        let c = gen::case(seed);
        println!("# set: {}\n{}", c.shape.text(), c.program.text());
        return Ok(ExitCode::SUCCESS);
    }
    if !o.replay.is_empty() {
        return replay(&o.replay);
    }
    campaign(o)
}
