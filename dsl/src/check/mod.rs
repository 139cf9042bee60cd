//! Semantic checks: from parsed files to resolved [`Program`]s.
//!
//! The checker resolves `use`, names, masks, `fn`s and block calls; infers
//! every index's extent from the tensors it subscripts (shape inference for
//! index notation); attaches each `where` clause to the reduction or
//! normaliser that binds its indices; recognises recurrences (a definition
//! that reads itself at `t - 1`); proves every subscript in range; and types
//! every expression (integer, real, boolean). Errors are collected, not
//! thrown: one run reports every problem it can find.

mod expr;
mod range;

pub use crate::ops::{erf, scalar_binop, scalar_builtin};

use crate::ast::{self, BlockKind, Expr, ExprKind, FnDef, Item};
use crate::diag::Diagnostic;
use crate::parse::parse_file;
use crate::span::{FileId, SourceMap, Span};
use crate::stdlib;
use crate::typed::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Options that change what a program means: `--set NAME=VALUE` for configs.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub overrides: BTreeMap<String, f64>,
}

/// The result of checking one file.
#[derive(Debug)]
pub struct Checked {
    pub sources: SourceMap,
    /// One program per mixer defined in the main file, in source order.
    pub programs: Vec<Program>,
    pub diagnostics: Vec<Diagnostic>,
    /// `--set` keys that named a config.
    pub used_overrides: BTreeSet<String>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.is_error())
    }

    /// The mixer to run: the named one, or the only one.
    pub fn program(&self, name: Option<&str>) -> Result<&Program, String> {
        let names: Vec<&str> = self.programs.iter().map(|p| p.name.as_str()).collect();
        match name {
            Some(n) => self.programs.iter().find(|p| p.name == n).ok_or_else(|| {
                format!(
                    "no mixer named `{n}`; this file defines: {}",
                    names.join(", ")
                )
            }),
            None => match self.programs.len() {
                0 => Err("this file defines no mixer".into()),
                1 => Ok(&self.programs[0]),
                _ => Err(format!(
                    "this file defines several mixers ({}); choose one with --mixer",
                    names.join(", ")
                )),
            },
        }
    }
}

/// Checks a file given by name and text (its `use`d std modules are added).
pub fn check_file(name: &str, text: &str, opts: &CheckOptions) -> Checked {
    let mut sources = SourceMap::default();
    let main = sources.add(name, text);
    check_sources(sources, main, opts)
}

/// Result type of conversions: `Err` means "already reported".
pub(crate) type R<T> = Result<T, Reported>;
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reported;

/// Everything visible at file level: masks, fns, blocks, file configs.
pub(crate) struct Globals {
    pub masks: HashMap<String, FnDef>,
    pub fns: HashMap<String, FnDef>,
    pub blocks: HashMap<String, ast::Block>,
    pub configs: HashMap<String, (f64, bool)>,
}

impl Globals {
    /// Drops an imported definition that a main-file item shadows.
    fn forget(&mut self, name: &str) {
        self.masks.remove(name);
        self.fns.remove(name);
        self.blocks.remove(name);
        self.configs.remove(name);
    }
}

pub fn check_sources(mut sources: SourceMap, main: FileId, opts: &CheckOptions) -> Checked {
    let mut diags = Vec::new();
    // Parse the main file and, transitively, the std modules it uses.
    let mut files: Vec<(FileId, ast::File)> = Vec::new();
    let mut loaded: HashMap<String, FileId> = HashMap::new();
    let mut queue = vec![main];
    while let Some(id) = queue.pop() {
        let (tree, d) = parse_file(&sources.get(id).text.clone(), id);
        diags.extend(d);
        for item in &tree.items {
            if let Item::Use { path, span } = item {
                let names: Vec<&str> = path.iter().map(|p| p.name.as_str()).collect();
                if names.len() != 2 || names[0] != "std" {
                    diags.push(
                        Diagnostic::error(
                            format!("cannot find module `{}`", names.join(".")),
                            *span,
                        )
                        .with_help(format!("available modules: {}", std_list())),
                    );
                    continue;
                }
                if loaded.contains_key(names[1]) {
                    continue;
                }
                match stdlib::module(names[1]) {
                    Some((fname, text)) => {
                        let fid = sources.add(fname, text);
                        loaded.insert(names[1].to_string(), fid);
                        queue.push(fid);
                    }
                    None => diags.push(
                        Diagnostic::error(
                            format!("cannot find module `std.{}`", names[1]),
                            path[1].span,
                        )
                        .with_label("no such module")
                        .with_help(format!("available modules: {}", std_list())),
                    ),
                }
            }
        }
        files.push((id, tree));
    }
    // Std modules first, so the main file's definitions are the ones that clash.
    files.sort_by_key(|(id, _)| if *id == main { 1 } else { 0 });

    let mut g = Globals {
        masks: HashMap::new(),
        fns: HashMap::new(),
        blocks: HashMap::new(),
        configs: HashMap::new(),
    };
    // Names defined in the main file shadow names imported from std (as a
    // local item shadows a glob import in Rust); a name defined twice in the
    // same file is an error.
    let mut first_def: HashMap<String, Span> = HashMap::new();
    let mut declare = |name: &ast::Ident, diags: &mut Vec<Diagnostic>| -> bool {
        if let Some(prev) = first_def.get(&name.name) {
            if prev.file == name.span.file || name.span.file != main {
                diags.push(
                    Diagnostic::error(format!("`{}` is defined twice", name.name), name.span)
                        .with_label("second definition")
                        .with_secondary(*prev, "first defined here"),
                );
                return false;
            }
        }
        if Builtin::lookup(&name.name).is_some() || RESERVED.contains(&name.name.as_str()) {
            diags.push(
                Diagnostic::error(
                    format!("`{}` is a builtin and cannot be redefined", name.name),
                    name.span,
                )
                .with_help("choose another name"),
            );
            return false;
        }
        first_def.insert(name.name.clone(), name.span);
        true
    };
    let mut main_blocks = Vec::new();
    for (fid, tree) in &files {
        for item in &tree.items {
            match item {
                Item::Mask(f) => {
                    if declare(&f.name, &mut diags) {
                        g.forget(&f.name.name);
                        g.masks.insert(f.name.name.clone(), f.clone());
                    }
                }
                Item::Fn(f) => {
                    if declare(&f.name, &mut diags) {
                        g.forget(&f.name.name);
                        g.fns.insert(f.name.name.clone(), f.clone());
                    }
                }
                Item::Block(b) => {
                    if declare(&b.name, &mut diags) {
                        g.forget(&b.name.name);
                        g.blocks.insert(b.name.name.clone(), b.clone());
                        if *fid == main {
                            main_blocks.push(b.name.name.clone());
                        }
                    }
                }
                Item::Config(entries, _) => {
                    for (n, e) in entries {
                        if declare(n, &mut diags) {
                            g.forget(&n.name);
                            let v = expr::const_value_global(&g, e, &mut diags);
                            let v = match opts.overrides.get(&n.name) {
                                Some(o) => (*o, o.fract() == 0.0 && v.map(|x| x.1).unwrap_or(true)),
                                None => match v {
                                    Some(v) => v,
                                    None => continue,
                                },
                            };
                            g.configs.insert(n.name.clone(), v);
                        }
                    }
                }
                Item::Use { .. } | Item::Error(_) => {}
            }
        }
    }

    // Masks must be boolean; fns must not be.
    for f in g.masks.values().chain(g.fns.values()) {
        expr::check_fn_body(&g, f, g.masks.contains_key(&f.name.name), &mut diags);
    }

    let mut used = BTreeSet::new();
    let mut programs = Vec::new();
    for name in &main_blocks {
        let b = &g.blocks[name];
        let mut builder = expr::Builder::new(&g, opts, b.name.name.clone(), b.span);
        let ok = builder.root(b);
        used.extend(builder.used_overrides.iter().cloned());
        diags.append(&mut builder.diags);
        if let (Some(p), BlockKind::Mixer) = (ok, b.kind) {
            programs.push(p);
        }
    }
    // Report each problem once (a filter instantiated twice reports once).
    let mut seen = BTreeSet::new();
    diags.retain(|d| seen.insert((d.span.file, d.span.lo, d.span.hi, d.message.clone())));
    diags.sort_by_key(|d| (d.span.file != main, d.span.file, d.span.lo));
    Checked {
        sources,
        programs,
        diagnostics: diags,
        used_overrides: used,
    }
}

const RESERVED: &[&str] = &[
    "sum",
    "mean",
    "prod",
    "softmax",
    "rms_norm",
    "layer_norm",
    "conv",
    "pi",
    "normal",
    "uniform",
    "constant",
    "zeros",
    "ones",
];

fn std_list() -> String {
    stdlib::MODULES
        .iter()
        .map(|(n, _, _)| format!("std.{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Edit distance, for "did you mean" hints.
pub(crate) fn similar<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    if name.chars().count() < 3 {
        return None; // one- and two-letter names are indices and sizes: any guess is noise
    }
    candidates
        .filter(|c| *c != name)
        .map(|c| (dist(name, c), c))
        .filter(|(d, c)| *d <= 2.min(c.len().saturating_sub(1)).max(1))
        .min()
        .map(|(_, c)| c)
}

/// Names appearing in an expression (not as called function names).
pub(crate) fn names_in(e: &Expr, out: &mut BTreeSet<String>) {
    match &e.kind {
        ExprKind::Name(n) => {
            out.insert(n.name.clone());
        }
        ExprKind::Index(b, s) => {
            names_in(b, out);
            s.iter().for_each(|x| names_in(x, out));
        }
        ExprKind::Call { args, body, .. } => {
            args.iter().for_each(|a| names_in(&a.value, out));
            if let Some(b) = body {
                names_in(b, out);
            }
        }
        ExprKind::Unary(_, a) => names_in(a, out),
        ExprKind::Binary(_, a, b) | ExprKind::Where(a, b) | ExprKind::Masked(a, b) => {
            names_in(a, out);
            names_in(b, out);
        }
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Error => {}
    }
}
