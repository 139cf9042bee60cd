//! Shrinking a failing case to a small one that fails the same way.
//!
//! Greedy, in the manner of C-Reduce and proptest: each round tries
//! smaller sizes, dropping a statement, replacing an expression node by
//! one of its children or by a constant, dropping a `where`, and dropping
//! declarations and items nothing uses. A candidate is kept when it still
//! checks and the same path still gives the same class of failure. Rounds
//! repeat until none helps or the budget runs out.

use crate::exec::Path;
use crate::gen::{Program, Shape, E};
use std::time::{Duration, Instant};

/// The failure to preserve: a path and its verdict class.
#[derive(Clone, Debug)]
pub struct Target {
    pub path: Path,
    pub class: &'static str,
    pub seed: u64,
}

fn still_fails(p: &Program, s: &Shape, t: &Target) -> bool {
    let out = crate::run_source(&p.text(), s, t.seed, &[t.path]);
    out.invalid.is_none() && out.verdicts.iter().any(|(_, v)| v.class() == t.class)
}

fn preorder_len(e: &E) -> usize {
    e.size()
}

fn get(e: &E, mut k: usize) -> Option<&E> {
    let mut work = vec![e];
    while let Some(x) = work.pop() {
        if k == 0 {
            return Some(x);
        }
        k -= 1;
        let mut cs = x.children();
        cs.reverse();
        work.extend(cs);
    }
    None
}

fn get_mut(e: &mut E, k: usize) -> Option<&mut E> {
    if k == 0 {
        return Some(e);
    }
    let mut k = k - 1;
    for c in e.children_mut() {
        let n = c.size();
        if k < n {
            return get_mut(c, k);
        }
        k -= n;
    }
    None
}

/// Candidate replacements for node `x`: its children, a constant, itself
/// without its `where`.
fn replacements(x: &E) -> Vec<E> {
    let mut v: Vec<E> = x.children().into_iter().cloned().collect();
    if !matches!(x, E::Atom(_)) {
        v.push(E::num(1.0));
    }
    match x {
        E::Red(k, i, b, Some(_)) => v.push(E::Red(k, i.clone(), b.clone(), None)),
        E::Norm(k, b, o, Some(_)) => v.push(E::Norm(k, b.clone(), o.clone(), None)),
        _ => {}
    }
    v
}

/// Identifier-ish tokens of `s`.
fn mentions(s: &str, name: &str) -> bool {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == name)
}

/// `p` without declarations, statements and items nothing reads.
fn prune(p: &Program) -> Program {
    let mut p = p.clone();
    loop {
        let before = p.clone();
        // Statements whose tensor nothing later reads (the output stays).
        let n = p.stmts.len();
        let keep: Vec<bool> = (0..n)
            .map(|k| {
                let name = &p.stmts[k].name;
                *name == p.ret
                    || p.stmts[k + 1..].iter().any(|s| mentions(&s.text(), name))
                    || mentions(&p.stmts[k].rhs.text(), name)
            })
            .collect();
        let mut it = keep.iter();
        p.stmts.retain(|_| *it.next().unwrap());
        let body: String = p.stmts.iter().map(|s| s.text() + "\n").collect();
        p.decls.retain(|d| match d.strip_prefix("param ") {
            Some(rest) => {
                let name = rest.split(':').next().unwrap_or("").trim();
                mentions(&body, name)
            }
            None => true,
        });
        if p == before {
            return p;
        }
    }
}

/// Shrinks `(p, s)`, which fails as `t` says, within `budget`.
pub fn shrink(p: &Program, s: &Shape, t: &Target, budget: Duration) -> (Program, Shape) {
    let start = Instant::now();
    let mut best = (prune(p), s.clone());
    if !still_fails(&best.0, &best.1, t) {
        best = (p.clone(), s.clone());
    }
    let out_of_time = |start: &Instant| start.elapsed() > budget;
    loop {
        let mut progress = false;
        // Sizes first: every later try runs faster.
        let keys: Vec<String> = best.1.sizes.keys().cloned().collect();
        for k in keys {
            let v = best.1.get(&k);
            let mut tries = vec![1, v / 2, v - 1];
            if k == "D" {
                let h = config_h(&best.0);
                tries = vec![h, h * 2, (v / 2 / h) * h, v - h];
            }
            for nv in tries {
                if nv < 1 || nv >= v || out_of_time(&start) {
                    continue;
                }
                let mut s2 = best.1.clone();
                s2.sizes.insert(k.clone(), nv);
                if still_fails(&best.0, &s2, t) {
                    best.1 = s2;
                    progress = true;
                    break;
                }
            }
        }
        // Items (fn, filter, use) nothing needs.
        let mut k = 0;
        while k < best.0.items.len() && !out_of_time(&start) {
            let mut p2 = best.0.clone();
            p2.items.remove(k);
            if still_fails(&p2, &best.1, t) {
                best.0 = p2;
                progress = true;
            } else {
                k += 1;
            }
        }
        // Statements, from the last but one backwards.
        let mut k = best.0.stmts.len();
        while k > 0 && !out_of_time(&start) {
            k -= 1;
            if best.0.stmts[k].name == best.0.ret {
                continue;
            }
            let mut p2 = best.0.clone();
            p2.stmts.remove(k);
            let p2 = prune(&p2);
            if still_fails(&p2, &best.1, t) {
                best.0 = p2;
                progress = true;
                k = k.min(best.0.stmts.len());
            }
        }
        // Expression nodes, statement by statement.
        let mut si = 0;
        while si < best.0.stmts.len() && !out_of_time(&start) {
            if best.0.stmts[si].where_.is_some() {
                let mut p2 = best.0.clone();
                p2.stmts[si].where_ = None;
                if still_fails(&p2, &best.1, t) {
                    best.0 = p2;
                    progress = true;
                }
            }
            let mut node = 0;
            while node < preorder_len(&best.0.stmts[si].rhs) && !out_of_time(&start) {
                let Some(x) = get(&best.0.stmts[si].rhs, node) else {
                    break;
                };
                let mut done = false;
                for rep in replacements(x) {
                    let mut p2 = best.0.clone();
                    if let Some(slot) = get_mut(&mut p2.stmts[si].rhs, node) {
                        *slot = rep;
                    }
                    let p2 = prune(&p2);
                    if si < p2.stmts.len() && still_fails(&p2, &best.1, t) {
                        best.0 = p2;
                        progress = true;
                        done = true;
                        break;
                    }
                    if out_of_time(&start) {
                        break;
                    }
                }
                if !done {
                    node += 1;
                }
                if si >= best.0.stmts.len() {
                    break;
                }
            }
            si += 1;
        }
        // H = 1 (one head) if it still fails.
        if config_h(&best.0) != 1 && !out_of_time(&start) {
            let mut p2 = best.0.clone();
            for d in p2.decls.iter_mut() {
                if d.starts_with("config H = ") {
                    *d = "config H = 1".into();
                }
            }
            if still_fails(&p2, &best.1, t) {
                best.0 = p2;
                progress = true;
            }
        }
        if !progress || out_of_time(&start) {
            return best;
        }
    }
}

fn config_h(p: &Program) -> i64 {
    p.decls
        .iter()
        .find_map(|d| d.strip_prefix("config H = ").and_then(|v| v.parse().ok()))
        .unwrap_or(1)
}
