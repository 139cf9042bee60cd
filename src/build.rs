//! `mixc build`: compile a mixer into a bundle, through an on-disk cache
//! keyed by content hash.
//!
//! The key covers everything the bundle depends on: the bundle format and
//! compiler version, the file's name and text, the embedded standard
//! library, the mixer, `--set`, the target and the dtype. A hit is read
//! back (and validated) without parsing anything.

use crate::{parse_set, print_diagnostics, resolve_sizes, DEFAULT_SIZES};
use anyhow::{anyhow, bail, Context, Result};
use mixc_dsl::{render, CheckOptions};
use mixc_runtime::bundle::{Bundle, FORMAT};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to build.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub file: &'a str,
    /// The file's text, when it does not come from disk (the embedded std).
    pub text: Option<&'a str>,
    pub mixer: Option<&'a str>,
    pub set: &'a [String],
    pub target: &'a str,
    pub use_cache: bool,
    pub dtype: mixc_runtime::Dtype,
    /// Stages of the MLIR path to print (a dump always rebuilds).
    pub dump: Dump,
}

/// Which stages of the MLIR path `mixc build --dump` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dump {
    pub kernel: bool,
    pub mlir: bool,
    pub ptx: bool,
}

impl Dump {
    fn any(&self) -> bool {
        self.kernel || self.mlir || self.ptx
    }
}

/// A bundle built or found in the cache.
pub struct Built {
    pub bundle: Bundle,
    pub cached: bool,
    pub seconds: f64,
}

/// `$MIXC_CACHE_DIR`, else `$XDG_CACHE_HOME/mixc`, else `~/.cache/mixc`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIXC_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mixc");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/mixc"),
        None => std::env::temp_dir().join("mixc-cache"),
    }
}

fn key(req: &Request, text: &str) -> String {
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part(FORMAT);
    part(env!("CARGO_PKG_VERSION"));
    // The compiler's sources (see the crate's build script): a changed
    // compiler never reads an older one's bundles.
    part(env!("MIXC_BUILD_ID"));
    part(req.file);
    part(text);
    for (name, path, src) in mixc_dsl::stdlib::MODULES {
        part(name);
        part(path);
        part(src);
    }
    part(req.mixer.unwrap_or(""));
    part(&req.set.join(","));
    part(req.target);
    part(req.dtype.name());
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds (or finds) the bundle for `req`. Program errors are rendered to
/// stderr and returned as `Ok(None)`.
pub fn build(req: &Request) -> Result<Option<Built>> {
    let t0 = Instant::now();
    if !mixc_backends::bundle::TARGETS.contains(&req.target) {
        bail!(
            "unknown target `{}` (known: {})",
            req.target,
            mixc_backends::bundle::TARGETS.join(", ")
        );
    }
    let text = match req.text {
        Some(t) => t.to_string(),
        None => std::fs::read_to_string(req.file)
            .with_context(|| format!("cannot read `{}`", req.file))?,
    };
    let hash = key(req, &text);
    let dir = cache_dir().join("bundles").join(&hash);
    if req.use_cache && !req.dump.any() && dir.join(mixc_runtime::bundle::MANIFEST).is_file() {
        if let Ok(bundle) = Bundle::load(&dir) {
            if bundle.manifest.hash == hash {
                return Ok(Some(Built {
                    bundle,
                    cached: true,
                    seconds: t0.elapsed().as_secs_f64(),
                }));
            }
        }
    }
    let set = parse_set(req.set)?;
    let c = mixc_dsl::check_file(
        req.file,
        &text,
        &CheckOptions {
            overrides: set.clone(),
        },
    );
    print_diagnostics(&c);
    if c.has_errors() {
        return Ok(None);
    }
    let prog = c.program(req.mixer).map_err(|e| anyhow!(e))?;
    // The batch and sequence sizes (the first input's first two axes)
    // stay free unless set; other free sizes take --set or defaults.
    let roles = mixc_compiler::ir::lower::lower(prog).run_time_sizes();
    let mut defaults: Vec<(&str, i64)> = DEFAULT_SIZES.to_vec();
    defaults.retain(|(n, _)| !roles.iter().any(|r| r == n));
    let runtime_free: Vec<&str> = prog
        .free_dims()
        .into_iter()
        .filter(|d| roles.iter().any(|r| r == d) && !set.contains_key(*d))
        .collect();
    for d in &runtime_free {
        defaults.push((d, 1));
    }
    let sizes = resolve_sizes(&c, prog, &set, &defaults)?;
    let fixed: BTreeMap<String, i64> = sizes
        .iter()
        .filter(|(k, _)| !runtime_free.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let module = mixc_compiler::ir::lower::lower(prog);
    // Initialisers are evaluated once, at build time: they must not depend
    // on the run-time sizes. Evaluate at two bindings and compare.
    let fills_at = |n: i64| -> Result<Option<Vec<Option<mixc_runtime::Fill>>>> {
        let mut s = sizes.clone();
        for d in &runtime_free {
            s.insert(d.to_string(), n);
        }
        let it = match mixc_compiler::Interpreter::new(prog, &s) {
            Ok(it) => it,
            Err(e) => {
                eprint!("{}", render(&c.sources, &[e.to_diagnostic()]));
                return Ok(None);
            }
        };
        match it.fills() {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                eprint!("{}", render(&c.sources, &[e.to_diagnostic()]));
                Ok(None)
            }
        }
    };
    let Some(fills) = fills_at(1)? else {
        return Ok(None);
    };
    if !runtime_free.is_empty() {
        let Some(other) = fills_at(3)? else {
            return Ok(None);
        };
        if let Some(k) = (0..fills.len()).find(|k| fills[*k] != other[*k]) {
            bail!(
                "the initialiser of `{}` depends on {}, which a bundle leaves to run time; fix them with --set",
                module.values[k].name,
                runtime_free.join(" or ")
            );
        }
    }
    let meta = mixc_backends::bundle::Meta {
        mixer: prog.name.clone(),
        source: req.file.to_string(),
        hash: hash.clone(),
        fixed,
        fills,
        dtype: req.dtype,
    };
    if req.dump.any() {
        dump(&module, &meta, req)?;
    }
    // Build into a scratch directory, then move it into place, so a
    // concurrent or interrupted build never leaves a half bundle.
    let scratch = cache_dir()
        .join("tmp")
        .join(format!("{hash}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    mixc_backends::bundle::write(&module, req.target, &meta, &scratch)
        .map_err(|e| anyhow!("{e}"))?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::rename(&scratch, &dir)
        .or_else(|_| copy_dir(&scratch, &dir))
        .with_context(|| format!("cannot write the bundle to {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let bundle = Bundle::load(&dir).map_err(|e| anyhow!(e))?;
    Ok(Some(Built {
        bundle,
        cached: false,
        seconds: t0.elapsed().as_secs_f64(),
    }))
}

/// Prints the MLIR path's stages for the bundle's module.
fn dump(
    module: &mixc_compiler::ir::Module,
    meta: &mixc_backends::bundle::Meta,
    req: &Request,
) -> Result<()> {
    use mixc_backends::{kir, mlir};
    let verified = mixc_compiler::ir::verify::verify(module).map_err(|e| anyhow!("{e}"))?;
    let gpu = req.target.starts_with("sm_");
    let kernels = if gpu {
        mixc_backends::bundle::gpu_kernels(verified.module(), meta, req.target).map(|l| l.kernels)
    } else {
        kir::lower_host(verified.module(), &meta.fixed, true).map(|l| l.kernels())
    }
    .map_err(|e| anyhow!("{e}"))?;
    if req.dump.kernel {
        for k in &kernels {
            print!("{k}");
        }
    }
    if req.dump.mlir {
        let target = if gpu {
            mlir::Target::Gpu
        } else {
            mlir::Target::Host
        };
        print!(
            "{}",
            mlir::module_text(&kernels, target).map_err(|e| anyhow!("{e}"))?
        );
    }
    if req.dump.ptx {
        if !gpu {
            bail!("--dump ptx needs a GPU target (--target sm_80 or sm_90)");
        }
        print!(
            "{}",
            mlir::ptx(&kernels, req.target).map_err(|e| anyhow!("{e}"))?
        );
    }
    Ok(())
}

/// Copies a bundle's files (flat) to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
