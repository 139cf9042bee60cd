//! The regression corpus: data-driven test files, in the style of
//! Cranelift's filetests. Each file is a `.mix` program whose leading
//! comment lines state how to run it and what to expect:
//!
//! ```text
//! # fuzz: causal sum of 1 + q.k, compiled as plain linear attention
//! # set: B=2,L=17,D=8
//! # seed: 3
//! # paths: cpu simt-f32-sm80 opt-cpu
//! # expect: ok
//! use std.masks
//! mixer rnd(x: [B, L, D]) -> [B, L, D] { ... }
//! ```
//!
//! `paths` may be `all`. `expect` is `ok` (every path within its
//! tolerance) or a list `path=class ...` (classes as
//! [`crate::Verdict::class`]), or `check-error: TEXT` (the checker must
//! reject the program with a message containing TEXT). One harness runs
//! every file; with `MIXC_BLESS=1` it rewrites each `expect` line to what
//! was observed instead of failing.

use crate::exec::Path;
use crate::gen::Shape;
use crate::Invalid;

/// A parsed corpus file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub title: String,
    pub shape: Shape,
    pub seed: u64,
    pub paths: Vec<Path>,
    pub expect: String,
    /// The whole file, header included (comments are ignored by the
    /// checker).
    pub text: String,
}

/// Parses the header of a corpus file.
pub fn parse(text: &str) -> Result<Entry, String> {
    let mut e = Entry {
        title: String::new(),
        shape: Shape {
            sizes: Default::default(),
        },
        seed: 0,
        paths: Path::all(),
        expect: "ok".into(),
        text: text.to_string(),
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            if line.starts_with('#') {
                continue;
            }
            break;
        };
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "fuzz" => e.title = value.to_string(),
            "set" => e.shape = Shape::parse(value)?,
            "seed" => e.seed = value.parse().map_err(|_| format!("seed `{value}`"))?,
            "paths" => {
                e.paths = if value == "all" {
                    Path::all()
                } else {
                    value
                        .split_whitespace()
                        .map(Path::parse)
                        .collect::<Result<_, _>>()?
                }
            }
            "expect" => e.expect = value.to_string(),
            _ => {}
        }
    }
    Ok(e)
}

/// Runs one entry: `Ok(observed)` when it meets its expectation, else
/// `Err((observed, why))`. `observed` is the `expect` line that would
/// describe what happened.
pub fn run(e: &Entry) -> Result<String, (String, String)> {
    let out = crate::run_source(&e.text, &e.shape, e.seed, &e.paths);
    if let Some(rest) = e.expect.strip_prefix("check-error:") {
        let want = rest.trim();
        return match &out.invalid {
            Some(Invalid::Check(msg)) if msg.contains(want) => Ok(e.expect.clone()),
            Some(Invalid::Check(msg)) => Err((
                e.expect.clone(),
                format!("the checker's message does not contain `{want}`:\n{msg}"),
            )),
            other => Err((
                "ok".into(),
                format!("expected a check error containing `{want}`, got {other:?}"),
            )),
        };
    }
    if let Some(inv) = &out.invalid {
        let msg = match inv {
            Invalid::Check(m) => format!("check-error: {}", m.lines().next().unwrap_or("")),
            Invalid::Interp(m) => format!("interpreter error: {m}"),
            Invalid::NonFinite => "non-finite reference output".into(),
        };
        return Err((msg.clone(), msg));
    }
    let all_ok = out.verdicts.iter().all(|(_, v)| v.class() == "ok");
    let observed = if all_ok {
        "ok".to_string()
    } else {
        out.verdicts
            .iter()
            .map(|(p, v)| format!("{}={}", p.name(), v.class()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let expected_ok = |p: &Path| -> &str {
        if e.expect == "ok" {
            return "ok";
        }
        e.expect
            .split_whitespace()
            .find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == p.name()).then_some(v)
            })
            .unwrap_or("ok")
    };
    let wrong: Vec<String> = out
        .verdicts
        .iter()
        .filter(|(p, v)| v.class() != expected_ok(p))
        .map(|(p, v)| {
            format!(
                "{}: expected {}, got {}",
                p.name(),
                expected_ok(p),
                v.describe()
            )
        })
        .collect();
    if wrong.is_empty() {
        Ok(observed)
    } else {
        Err((observed, wrong.join("\n")))
    }
}

/// `text` with its `expect` line set to `expect` (added after the other
/// header lines if missing).
pub fn bless(text: &str, expect: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    let mut in_header = true;
    for line in text.lines() {
        if in_header && !line.starts_with('#') {
            if !done {
                out.push_str(&format!("# expect: {expect}\n"));
                done = true;
            }
            in_header = false;
        }
        if in_header && line.starts_with("# expect:") {
            out.push_str(&format!("# expect: {expect}\n"));
            done = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A corpus file for a shrunk failure.
pub fn file(
    title: &str,
    src: &str,
    shape: &Shape,
    seed: u64,
    paths: &[Path],
    expect: &str,
) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.name()).collect();
    format!(
        "# fuzz: {title}\n# set: {}\n# seed: {seed}\n# paths: {}\n# expect: {expect}\n{src}",
        shape.text(),
        names.join(" ")
    )
}
