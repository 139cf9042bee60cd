//! A grammar-based generator of random mixers.
//!
//! A program is built statement by statement from weighted productions
//! over what `docs/language.md` allows: projections (optionally under an
//! elementwise function, with biases), elementwise maps with broadcast
//! reads, shifted, reversed, `//` and `%` subscripts guarded by `select` or
//! `where`, user `fn`s, long and deeply nested expressions; attention with
//! arbitrary elementwise functions of the scores (and of the operands inside
//! the contraction), stacked score modifications, softmax or a plain causal
//! sum, masks from `std.masks`, segment masks, linear predicates, masks that
//! read a tensor, and compound masks; recurrences with vector and matrix
//! states, input-dependent coefficients and several readers; convolutions
//! with parameter, computed or filter-block filters, dilated taps and gated
//! signals; normalisers over any axis; nested reductions of every kind;
//! several inputs, one of another length. Sizes are drawn separately
//! ([`Shape`]) so the same program runs at odd sizes, below and above every
//! tile, head dims that hit tensor cores and lengths above the FFT block.
//!
//! Programs are trees ([`E`]) printed to text, so the shrinker
//! (`crate::shrink`) can edit them. The generator aims at valid programs;
//! the checker is the judge, and the campaign counts what it rejects.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A small deterministic random source (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
    /// An index into `weights`, drawn in proportion to them.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut r = self.below(total as usize) as u32;
        for (k, w) in weights.iter().enumerate() {
            if r < *w {
                return k;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

/// An expression tree, printed as `.mix` text.
#[derive(Clone, Debug, PartialEq)]
pub enum E {
    /// A literal or any atom of text (`0.5`, `E ** -0.5`, `l / L`).
    Atom(String),
    /// `name[subscripts]`.
    Read(String, Vec<String>),
    /// A call: `exp(a)`, `min(a, b)`, a user `fn`.
    Call(String, Vec<E>),
    /// `a op b`, printed in parentheses.
    Bin(&'static str, Box<E>, Box<E>),
    Neg(Box<E>),
    /// `select(cond, a, b)`.
    Select(String, Box<E>, Box<E>),
    /// `(red(indices) body where pred)`.
    Red(&'static str, Vec<String>, Box<E>, Option<String>),
    /// `softmax(a, over: j)` and the norms: (kind, body, over, eps, where).
    Norm(&'static str, Box<E>, String, Option<String>),
    /// `conv(signal, filter, over: l)[subscripts]`.
    Conv(String, String, String, Vec<String>),
}

impl E {
    pub fn read(name: &str, subs: &[&str]) -> E {
        E::Read(name.into(), subs.iter().map(|s| s.to_string()).collect())
    }
    pub fn num(x: f64) -> E {
        E::Atom(fmt_num(x))
    }
    pub fn bin(op: &'static str, a: E, b: E) -> E {
        E::Bin(op, Box::new(a), Box::new(b))
    }
    pub fn call(f: &str, args: Vec<E>) -> E {
        E::Call(f.into(), args)
    }

    /// The direct subexpressions.
    pub fn children(&self) -> Vec<&E> {
        match self {
            E::Atom(_) | E::Read(..) | E::Conv(..) => vec![],
            E::Call(_, a) => a.iter().collect(),
            E::Bin(_, a, b) | E::Select(_, a, b) => vec![a, b],
            E::Neg(a) | E::Red(_, _, a, _) | E::Norm(_, a, _, _) => vec![a],
        }
    }

    pub fn children_mut(&mut self) -> Vec<&mut E> {
        match self {
            E::Atom(_) | E::Read(..) | E::Conv(..) => vec![],
            E::Call(_, a) => a.iter_mut().collect(),
            E::Bin(_, a, b) | E::Select(_, a, b) => vec![&mut **a, &mut **b],
            E::Neg(a) | E::Red(_, _, a, _) | E::Norm(_, a, _, _) => vec![&mut **a],
        }
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        let mut n = 0;
        let mut work = vec![self];
        while let Some(e) = work.pop() {
            n += 1;
            work.extend(e.children());
        }
        n
    }

    fn print(&self, out: &mut String, in_reduction: bool) {
        match self {
            E::Atom(s) => out.push_str(s),
            E::Read(n, subs) => {
                let _ = write!(out, "{n}[{}]", subs.join(", "));
            }
            E::Call(f, args) => {
                let _ = write!(out, "{f}(");
                for (k, a) in args.iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    a.print(out, false);
                }
                out.push(')');
            }
            E::Bin(op, a, b) => {
                // A reduction's body is a product: print its top-level
                // product bare, everything else in parentheses.
                let bare = in_reduction && *op == "*";
                if !bare {
                    out.push('(');
                }
                a.print(out, bare);
                let _ = write!(out, " {op} ");
                b.print(out, bare);
                if !bare {
                    out.push(')');
                }
            }
            E::Neg(a) => {
                out.push_str("(-");
                a.print(out, false);
                out.push(')');
            }
            E::Select(c, a, b) => {
                let _ = write!(out, "select({c}, ");
                a.print(out, false);
                out.push_str(", ");
                b.print(out, false);
                out.push(')');
            }
            E::Red(kind, idx, body, w) => {
                let _ = write!(out, "({kind}({}) ", idx.join(", "));
                body.print(out, true);
                if let Some(w) = w {
                    let _ = write!(out, " where {w}");
                }
                out.push(')');
            }
            E::Norm(kind, body, over, w) => {
                let _ = write!(out, "({kind}(");
                body.print(out, false);
                let _ = write!(out, ", over: {over}");
                if *kind != "softmax" {
                    out.push_str(", eps: 0.00001");
                }
                out.push(')');
                if let Some(w) = w {
                    let _ = write!(out, " where {w}");
                }
                out.push(')');
            }
            E::Conv(u, h, over, subs) => {
                let _ = write!(out, "conv({u}, {h}, over: {over})[{}]", subs.join(", "));
            }
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        self.print(&mut s, false);
        s
    }
}

fn fmt_num(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e6 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// One statement: `lhs = rhs [where pred]`, or a whole-tensor call.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    /// The defined tensor's name.
    pub name: String,
    /// The left-hand side's subscripts, with optional `: extent`
    /// annotations (`t: L`); empty for a call statement.
    pub lhs: Vec<String>,
    pub rhs: E,
    pub where_: Option<String>,
}

impl Stmt {
    pub fn text(&self) -> String {
        let mut s = if self.lhs.is_empty() {
            format!("{} = {}", self.name, self.rhs.text())
        } else {
            format!(
                "{}[{}] = {}",
                self.name,
                self.lhs.join(", "),
                self.rhs.text()
            )
        };
        if let Some(w) = &self.where_ {
            let _ = write!(s, " where {w}");
        }
        s
    }
}

/// A generated program: file-level items, then one mixer.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// `use`, `fn`, `mask` and `filter` items, verbatim.
    pub items: Vec<String>,
    /// The mixer's inputs after `x: [B, L, D]` (`c: [B, M, D]`).
    pub extra_inputs: Vec<String>,
    /// `config`, `dim` and `param` lines, verbatim.
    pub decls: Vec<String>,
    pub stmts: Vec<Stmt>,
    pub ret: String,
}

impl Program {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for i in &self.items {
            s.push_str(i);
            s.push('\n');
        }
        let mut sig = String::from("x: [B, L, D]");
        for i in &self.extra_inputs {
            sig.push_str(", ");
            sig.push_str(i);
        }
        let _ = writeln!(s, "mixer rnd({sig}) -> [B, L, D] {{");
        for d in &self.decls {
            let _ = writeln!(s, "    {d}");
        }
        for st in &self.stmts {
            let _ = writeln!(s, "    {}", st.text());
        }
        let _ = writeln!(s, "    return {}\n}}", self.ret);
        s
    }
}

/// The sizes a program runs at.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub sizes: BTreeMap<String, i64>,
}

impl Shape {
    pub fn get(&self, k: &str) -> i64 {
        self.sizes.get(k).copied().unwrap_or(1)
    }
    /// `B=2,L=33,D=16` form.
    pub fn text(&self) -> String {
        self.sizes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn parse(s: &str) -> Result<Shape, String> {
        let mut sizes = BTreeMap::new();
        for kv in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}`: expected NAME=VALUE"))?;
            let v: i64 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{kv}`: not an integer"))?;
            sizes.insert(k.trim().to_string(), v);
        }
        Ok(Shape { sizes })
    }
}

/// A random program and the sizes to run it at.
#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub program: Program,
    pub shape: Shape,
}

/// Axes of generated tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ax {
    B,
    L,
    M,
    D,
    H,
    E,
    /// A constant extent (taps, a small table).
    K(i64),
}

impl Ax {
    fn extent(self) -> String {
        match self {
            Ax::B => "B".into(),
            Ax::L => "L".into(),
            Ax::M => "M".into(),
            Ax::D => "D".into(),
            Ax::H => "H".into(),
            Ax::E => "E".into(),
            Ax::K(k) => k.to_string(),
        }
    }
    fn pool(self) -> &'static [&'static str] {
        match self {
            Ax::B => &["b", "n", "bt"],
            Ax::L => &["l", "i", "t", "p", "q0"],
            Ax::M => &["m", "s", "u0"],
            Ax::D => &["d", "c", "f", "ch"],
            Ax::H => &["h", "g", "hd"],
            Ax::E => &["e", "r", "z", "ee"],
            Ax::K(_) => &["k", "tap", "w0"],
        }
    }
}

#[derive(Clone, Debug)]
struct T {
    name: String,
    axes: Vec<Ax>,
    /// Read by some later statement (or returned).
    used: bool,
    /// Defined by the mixer's statements (not an input or parameter).
    computed: bool,
    /// The axis names of its definition (what a whole-tensor use names
    /// its axes), when known.
    own: Vec<String>,
}

struct Gen {
    r: Rng,
    items: Vec<String>,
    decls: Vec<String>,
    stmts: Vec<Stmt>,
    tensors: Vec<T>,
    next: usize,
    fns: Vec<(&'static str, usize)>,
    has_m: bool,
    masks_used: bool,
    /// Deep or long expressions are drawn at most once a program.
    big_done: bool,
}

const UNARY: &[&str] = &[
    "tanh", "sigmoid", "silu", "gelu", "abs", "relu", "sin", "cos", "erf", "softplus",
];

impl Gen {
    fn fresh(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}{}", self.next)
    }

    /// Index names for `axes`, distinct, drawn from each axis's pool.
    fn names(&mut self, axes: &[Ax], taken: &mut Vec<String>) -> Vec<String> {
        axes.iter()
            .map(|a| {
                let pool = a.pool();
                let mut k = self.r.below(pool.len());
                for _ in 0..pool.len() {
                    if !taken.iter().any(|t| t == pool[k]) {
                        break;
                    }
                    k = (k + 1) % pool.len();
                }
                let mut n = pool[k].to_string();
                let mut extra = 1;
                while taken.contains(&n) {
                    n = format!("{}{extra}", pool[k]);
                    extra += 1;
                }
                taken.push(n.clone());
                n
            })
            .collect()
    }

    fn param(&mut self, stem: &str, axes: &[Ax], init: &str) -> String {
        let name = self.fresh(stem);
        let shape: Vec<String> = axes.iter().map(|a| a.extent()).collect();
        self.decls
            .push(format!("param {name}: [{}] ~ {init}", shape.join(", ")));
        let own = axes.iter().map(|a| a.extent().to_lowercase()).collect();
        self.tensors.push(T {
            name: name.clone(),
            axes: axes.to_vec(),
            used: false,
            computed: false,
            own,
        });
        name
    }

    /// A parameter of unit-ish scale for `axes`, with `fan_in` summed
    /// elements per output (scaled to keep values of order one).
    fn weight(&mut self, stem: &str, axes: &[Ax], fan_in: &str) -> String {
        let init = format!("normal(0, ({fan_in}) ** -0.5)");
        self.param(stem, axes, &init)
    }

    fn define(&mut self, name: String, axes: Vec<Ax>, lhs: Vec<String>, rhs: E, w: Option<String>) {
        let own = lhs
            .iter()
            .map(|s| s.split(':').next().unwrap_or("").trim().to_string())
            .collect();
        self.stmts.push(Stmt {
            name: name.clone(),
            lhs,
            rhs,
            where_: w,
        });
        self.tensors.push(T {
            name,
            axes,
            used: false,
            computed: true,
            own,
        });
    }

    fn mark(&mut self, name: &str) {
        if let Some(t) = self.tensors.iter_mut().find(|t| t.name == name) {
            t.used = true;
        }
    }

    /// Computed tensors with exactly these axes.
    fn with_axes(&self, axes: &[Ax]) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|t| t.computed && t.axes == axes)
            .map(|t| t.name.clone())
            .collect()
    }

    /// A tensor of `axes`, preferring one nothing reads yet: computed ones
    /// of that shape, else `x` itself for `[B, L, D]`, else a projection.
    fn source(&mut self, axes: &[Ax]) -> String {
        let mut c: Vec<String> = self
            .tensors
            .iter()
            .filter(|t| t.computed && t.axes == axes && !t.used)
            .map(|t| t.name.clone())
            .collect();
        if c.is_empty() {
            c = self.with_axes(axes);
        }
        if axes == [Ax::B, Ax::L, Ax::D] && (c.is_empty() || self.r.chance(0.25)) {
            return "x".into();
        }
        if c.is_empty() {
            return self.projection(axes);
        }
        self.r.pick(&c)
    }

    /// `name[b, l, h, e] = f(sum(d) src[b, l, d] * w[d, h, e]) (+ bias)`:
    /// a projection of a `[B, L|M, D]` tensor to `axes` (which start with
    /// `B, L|M`).
    fn projection(&mut self, axes: &[Ax]) -> String {
        let seq = axes[1];
        let src = if seq == Ax::M {
            "c".to_string()
        } else {
            self.source(&[Ax::B, Ax::L, Ax::D])
        };
        self.mark(&src);
        let mut wax = vec![Ax::D];
        wax.extend_from_slice(&axes[2..]);
        let w = self.weight("w", &wax, "D");
        let mut taken = Vec::new();
        let idx = self.names(axes, &mut taken);
        let d = self.names(&[Ax::D], &mut taken).remove(0);
        let mut wsubs = vec![d.clone()];
        wsubs.extend(idx[2..].iter().cloned());
        let a = E::Read(src, vec![idx[0].clone(), idx[1].clone(), d.clone()]);
        let b = E::Read(w, wsubs);
        let prod = if self.r.chance(0.5) {
            E::bin("*", a, b)
        } else {
            E::bin("*", b, a)
        };
        // A scalar factor inside the contraction, sometimes.
        let prod = match self.r.below(6) {
            0 => E::bin("*", prod, E::num(0.5)),
            _ => prod,
        };
        let mut rhs = E::Red("sum", vec![d], Box::new(prod), None);
        match self.r.below(7) {
            0 | 1 => {
                let f = self.r.pick(UNARY);
                rhs = E::call(f, vec![rhs]);
            }
            2 => {
                let bax: Vec<Ax> = axes[2..].to_vec();
                let bias = self.param("bias", &bax, "normal(0, 0.5)");
                rhs = E::bin("+", rhs, E::Read(bias, idx[2..].to_vec()));
            }
            3 if !self.fns.is_empty() => {
                let (f, arity) = self.r.pick(&self.fns.clone());
                let mut args = vec![rhs];
                while args.len() < arity {
                    args.push(E::num(0.5));
                }
                rhs = E::call(f, args);
            }
            _ => {}
        }
        let name = self.fresh("p");
        self.define(name.clone(), axes.to_vec(), idx, rhs, None);
        name
    }

    /// A read of a tensor whose axes are a subset of `out` (broadcast), at
    /// the matching index names; sometimes shifted, reversed or folded
    /// along the sequence axis, guarded where it needs it.
    fn leaf(&mut self, out: &[(Ax, String)]) -> E {
        let axes: Vec<Ax> = out.iter().map(|(a, _)| *a).collect();
        let fits: Vec<T> = self
            .tensors
            .iter()
            .filter(|t| {
                !t.axes.is_empty()
                    && t.axes.iter().all(|a| axes.contains(a))
                    && t.axes
                        .iter()
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                        == t.axes.len()
            })
            .cloned()
            .collect();
        let want_input = axes.contains(&Ax::B) && axes.contains(&Ax::L) && axes.contains(&Ax::D);
        if fits.is_empty() || self.r.chance(0.08) {
            return match self.r.below(4) {
                0 => E::num(self.r.pick(&[0.5, 2.0, -1.0, 0.25, 3.0])),
                1 if axes.contains(&Ax::L) => {
                    let l = &out.iter().find(|(a, _)| *a == Ax::L).unwrap().1;
                    E::Atom(format!("({l} / L)"))
                }
                2 if want_input => self.plain_read("x", &[Ax::B, Ax::L, Ax::D], out),
                _ => E::num(1.0),
            };
        }
        let t = self.r.pick(&fits);
        self.mark(&t.name);
        let mut e = self.plain_read(&t.name, &t.axes, out);
        if let (E::Read(name, subs), true) = (&e, t.axes.contains(&Ax::L)) {
            let pos = t.axes.iter().position(|a| *a == Ax::L).unwrap();
            let l = subs[pos].clone();
            let shifted = |s: &str| {
                let mut v = subs.clone();
                v[pos] = s.to_string();
                E::Read(name.clone(), v)
            };
            e = match self.r.below(12) {
                0 => {
                    let k = self.r.pick(&[1, 2, 3, 5]);
                    E::Select(
                        format!("{l} >= {k}"),
                        Box::new(shifted(&format!("{l} - {k}"))),
                        Box::new(E::num(0.0)),
                    )
                }
                1 => shifted(&format!("L - 1 - {l}")),
                2 => shifted(&format!("{l} // 2")),
                3 => shifted(&format!("({l} + {}) % L", self.r.pick(&[1, 3, 7]))),
                4 => {
                    let k = self.r.pick(&[1, 2]);
                    E::Select(
                        format!("{l} + {k} < L"),
                        Box::new(shifted(&format!("{l} + {k}"))),
                        Box::new(E::num(0.0)),
                    )
                }
                _ => e,
            };
        }
        e
    }

    fn plain_read(&mut self, name: &str, axes: &[Ax], out: &[(Ax, String)]) -> E {
        let subs = axes
            .iter()
            .map(|a| out.iter().find(|(b, _)| b == a).unwrap().1.clone())
            .collect();
        E::Read(name.into(), subs)
    }

    /// A random real expression at the indices `out`.
    fn expr(&mut self, out: &[(Ax, String)], depth: usize) -> E {
        if depth == 0 || self.r.chance(0.25) {
            return self.leaf(out);
        }
        match self.r.weighted(&[5, 5, 3, 2, 2, 2, 2, 1, 2]) {
            0 => {
                let f = self.r.pick(UNARY);
                E::call(f, vec![self.expr(out, depth - 1)])
            }
            1 => {
                let op = self.r.pick(&["+", "-", "*", "*"]);
                let a = self.expr(out, depth - 1);
                let b = self.expr(out, depth - 1);
                E::bin(op, a, b)
            }
            2 => {
                // Bounded transcendental forms.
                let a = self.expr(out, depth - 1);
                match self.r.below(5) {
                    0 => E::call("exp", vec![E::Neg(Box::new(E::call("abs", vec![a])))]),
                    1 => E::call(
                        "sqrt",
                        vec![E::bin("+", E::num(1.0), E::bin("*", a.clone(), a))],
                    ),
                    2 => E::call(
                        "log",
                        vec![E::bin("+", E::num(1.0), E::call("abs", vec![a]))],
                    ),
                    3 => E::call(
                        "rsqrt",
                        vec![E::bin("+", E::num(1.0), E::bin("*", a.clone(), a))],
                    ),
                    _ => E::bin(
                        "/",
                        a,
                        E::bin("+", E::num(2.0), E::call("sin", vec![self.leaf(out)])),
                    ),
                }
            }
            3 => {
                let f = self.r.pick(&["min", "max"]);
                let a = self.expr(out, depth - 1);
                let b = self.expr(out, depth - 1);
                E::call(f, vec![a, b])
            }
            4 => {
                let c = self.leaf(out);
                let cond = format!("{} > {}", c.text(), self.r.pick(&["0", "0.5", "-0.25"]));
                let a = self.expr(out, depth - 1);
                let b = self.expr(out, depth - 1);
                E::Select(cond, Box::new(a), Box::new(b))
            }
            5 if !self.fns.is_empty() => {
                let (f, arity) = self.r.pick(&self.fns.clone());
                let args = (0..arity).map(|_| self.expr(out, depth - 1)).collect();
                E::call(f, args)
            }
            6 => self.nested_reduction(out, depth),
            7 if !self.big_done => {
                self.big_done = true;
                self.big(out)
            }
            _ => E::bin(
                "*",
                E::num(self.r.pick(&[0.5, -2.0, 1.5])),
                self.expr(out, depth - 1),
            ),
        }
    }

    /// A long sum of many terms, or a deeply nested expression.
    fn big(&mut self, out: &[(Ax, String)]) -> E {
        let leaf = self.leaf(out);
        if self.r.chance(0.5) {
            let n = 20 + self.r.below(200);
            let mut e = leaf.clone();
            for k in 0..n {
                let t = if k % 3 == 0 {
                    self.leaf(out)
                } else {
                    leaf.clone()
                };
                e = E::bin(
                    if k % 2 == 0 { "+" } else { "-" },
                    e,
                    E::bin("*", E::num(0.01), t),
                );
            }
            e
        } else {
            let n = 20 + self.r.below(150);
            let mut e = leaf;
            for k in 0..n {
                e = match k % 3 {
                    0 => E::call("tanh", vec![e]),
                    1 => E::bin("*", E::num(1.5), e),
                    _ => E::bin("+", e, E::num(0.1)),
                };
            }
            e
        }
    }

    /// `red(k) t[.., k, ..] * w[k]` for a tensor with one axis more than
    /// `out`, reduced by sum, mean, max, min or prod.
    fn nested_reduction(&mut self, out: &[(Ax, String)], depth: usize) -> E {
        let axes: Vec<Ax> = out.iter().map(|(a, _)| *a).collect();
        let cands: Vec<T> = self
            .tensors
            .iter()
            .filter(|t| {
                t.computed
                    && t.axes.len() == axes.len() + 1
                    && axes.iter().all(|a| t.axes.contains(a))
                    && t.axes.iter().filter(|a| !axes.contains(a)).count() == 1
            })
            .cloned()
            .collect();
        if cands.is_empty() {
            return self.expr(out, depth - 1);
        }
        let t = self.r.pick(&cands);
        self.mark(&t.name);
        let extra = *t.axes.iter().find(|a| !axes.contains(a)).unwrap();
        let mut taken: Vec<String> = out.iter().map(|(_, n)| n.clone()).collect();
        let k = self.names(&[extra], &mut taken).remove(0);
        let mut full = out.to_vec();
        full.push((extra, k.clone()));
        let read = self.plain_read(&t.name, &t.axes, &full);
        let kind = self.r.pick(&["sum", "mean", "max", "min", "prod", "sum"]);
        let body = match kind {
            "prod" => E::bin(
                "+",
                E::num(1.0),
                E::bin("*", E::num(0.1), E::call("tanh", vec![read])),
            ),
            "sum" if self.r.chance(0.5) => {
                let w = self.weight("wr", &[extra], &extra.extent());
                E::bin("*", read, E::Read(w, vec![k.clone()]))
            }
            _ => read,
        };
        E::Red(kind, vec![k], Box::new(body), None)
    }

    /// `name[out] = expr` over `axes`.
    fn map(&mut self, axes: &[Ax]) -> String {
        let mut taken = Vec::new();
        let idx = self.names(axes, &mut taken);
        let out: Vec<(Ax, String)> = axes.iter().copied().zip(idx.iter().cloned()).collect();
        let depth = 1 + self.r.below(4);
        let rhs = self.expr(&out, depth);
        // A statement-level guard on a shifted read, sometimes.
        let (rhs, w) = match (axes.iter().position(|a| *a == Ax::L), self.r.below(6)) {
            (Some(p), 0) => {
                let l = idx[p].clone();
                let src = self.source(axes);
                self.mark(&src);
                let mut subs = idx.clone();
                subs[p] = format!("{l} - 1");
                (
                    E::bin("+", rhs, E::Read(src, subs)),
                    Some(format!("{l} >= 1")),
                )
            }
            _ => (rhs, None),
        };
        let name = self.fresh("m");
        // Annotated extents: an index may appear only in folded or
        // reversed subscripts, or not at all.
        let lhs = idx
            .iter()
            .zip(axes)
            .map(|(n, a)| format!("{n}: {}", a.extent()))
            .collect();
        self.define(name.clone(), axes.to_vec(), lhs, rhs, w);
        name
    }

    /// A mask over query `i` and key `j` (same sequence) or None.
    fn mask(&mut self, i: &str, j: &str, causal_only: bool) -> String {
        let base = |g: &mut Gen| -> String {
            match g.r.weighted(&[4, 3, 2, 2, 2, 2, 2, 2]) {
                0 => {
                    g.masks_used = true;
                    format!("causal({i}, {j})")
                }
                1 => {
                    g.masks_used = true;
                    format!("window({i}, {j}, {})", g.r.pick(&[1, 3, 8, 70]))
                }
                2 => {
                    g.masks_used = true;
                    format!(
                        "dilated({i}, {j}, {}, {})",
                        g.r.pick(&[4, 8, 64]),
                        g.r.pick(&[1, 2, 3])
                    )
                }
                3 => {
                    g.masks_used = true;
                    format!("blocks({i}, {j}, {})", g.r.pick(&[2, 4, 16, 64]))
                }
                4 => {
                    let s = g.r.pick(&[3, 16, 65]);
                    format!("{i} // {s} == {j} // {s}")
                }
                5 => format!(
                    "{} * {j} <= {i} + {}",
                    g.r.pick(&[1, 2, 3]),
                    g.r.pick(&[0, 1, 5])
                ),
                6 => {
                    // A mask that reads a tensor (document ids, a key filter).
                    let doc = g.doc_ids();
                    format!("{doc}[{i}] == {doc}[{j}]")
                }
                _ => format!("x[0, {j}, 0] > {}", g.r.pick(&["-0.5", "0", "0.5"])),
            }
        };
        let m = base(self);
        if causal_only {
            return match self.r.below(3) {
                0 => format!("{j} <= {i} and ({m})"),
                _ => format!("{j} <= {i}"),
            };
        }
        match self.r.below(8) {
            0 => format!("({m}) and ({})", base(self)),
            1 => format!("({m}) or ({})", base(self)),
            2 => format!("not ({m})"),
            3 => format!("{j} != {i}"),
            _ => m,
        }
    }

    /// A `[L]` table of document ids (segments of a random length).
    fn doc_ids(&mut self) -> String {
        if let Some(t) = self.tensors.iter().find(|t| t.name.starts_with("doc")) {
            return t.name.clone();
        }
        let name = self.fresh("doc");
        let s = self.r.pick(&[5, 16, 40]);
        self.define(
            name.clone(),
            vec![Ax::L],
            vec!["l: L".into()],
            E::Atom(format!("floor((l + 0.5) / {s})")),
            None,
        );
        self.mark(&name);
        name
    }

    /// Attention: scores (an elementwise function of a query-key
    /// contraction, with stacked modifications), softmax with a mask or a
    /// plain (causal) weighted sum, then the weighted sum of values.
    fn attention(&mut self) -> String {
        let cross = self.has_m && self.r.chance(0.3);
        let kv_seq = if cross { Ax::M } else { Ax::L };
        let q = self.source(&[Ax::B, Ax::L, Ax::H, Ax::E]);
        let k = if cross {
            self.projection(&[Ax::B, Ax::M, Ax::H, Ax::E])
        } else {
            self.source(&[Ax::B, Ax::L, Ax::H, Ax::E])
        };
        let v = if cross {
            self.projection(&[Ax::B, Ax::M, Ax::H, Ax::E])
        } else {
            self.source(&[Ax::B, Ax::L, Ax::H, Ax::E])
        };
        for t in [&q, &k, &v] {
            self.mark(t);
        }
        let mut taken = Vec::new();
        let [b, i, h] =
            <[String; 3]>::try_from(self.names(&[Ax::B, Ax::L, Ax::H], &mut taken)).unwrap();
        let j = self.names(&[kv_seq], &mut taken).remove(0);
        let e = self.names(&[Ax::E], &mut taken).remove(0);
        let f = self.names(&[Ax::E], &mut taken).remove(0);
        // The contraction, with a function on an operand sometimes.
        let mut qr = E::Read(q.clone(), vec![b.clone(), i.clone(), h.clone(), e.clone()]);
        let mut kr = E::Read(k.clone(), vec![b.clone(), j.clone(), h.clone(), e.clone()]);
        match self.r.below(8) {
            0 => kr = E::call(self.r.pick(&["abs", "relu", "sigmoid"]), vec![kr]),
            1 => qr = E::call(self.r.pick(&["abs", "tanh", "silu"]), vec![qr]),
            _ => {}
        }
        let mut prod = if self.r.chance(0.5) {
            E::bin("*", qr, kr)
        } else {
            E::bin("*", kr, qr)
        };
        if self.r.chance(0.6) {
            prod = E::bin("*", prod, E::Atom("E ** -0.5".into()));
        }
        let sax = vec![Ax::B, Ax::H, Ax::L, kv_seq];
        let sidx = vec![b.clone(), h.clone(), i.clone(), j.clone()];
        let s = self.fresh("s");
        self.define(
            s.clone(),
            sax.clone(),
            sidx.clone(),
            E::Red("sum", vec![e.clone()], Box::new(prod), None),
            None,
        );
        self.mark(&s);
        // Stacked modifications: each its own statement or inline.
        let mut cur = E::Read(s.clone(), sidx.clone());
        for _ in 0..self.r.weighted(&[4, 3, 2, 1]) {
            cur = match self.r.below(6) {
                0 => {
                    let c = self.r.pick(&[5.0, 30.0]);
                    E::bin(
                        "*",
                        E::num(c),
                        E::call("tanh", vec![E::bin("/", cur, E::num(c))]),
                    )
                }
                1 if !cross => {
                    let slope = self.param("slope", &[Ax::H], "uniform(0.01, 0.3)");
                    E::bin(
                        "-",
                        cur,
                        E::bin(
                            "*",
                            E::Read(slope, vec![h.clone()]),
                            E::Atom(format!("abs({i} - {j})")),
                        ),
                    )
                }
                2 => {
                    let bias = self.param("rb", &[Ax::H], "normal(0, 0.5)");
                    E::bin("+", cur, E::Read(bias, vec![h.clone()]))
                }
                3 => E::call(self.r.pick(&["relu", "silu", "tanh", "abs"]), vec![cur]),
                4 => E::bin("*", cur, E::num(self.r.pick(&[2.0, 0.5]))),
                _ => E::bin("+", E::num(1.0), cur),
            };
            if self.r.chance(0.5) {
                let n = self.fresh("sm");
                self.define(n.clone(), sax.clone(), sidx.clone(), cur, None);
                self.mark(&n);
                cur = E::Read(n, sidx.clone());
            }
        }
        let vread = E::Read(v.clone(), vec![b.clone(), j.clone(), h.clone(), f.clone()]);
        let oax = vec![Ax::B, Ax::L, Ax::H, Ax::E];
        let oidx = vec![b.clone(), i.clone(), h.clone(), f.clone()];
        let o = self.fresh("o");
        match self.r.weighted(&[5, 4, 2]) {
            0 => {
                // Softmax over the keys, masked.
                let w = if cross || self.r.chance(0.2) {
                    None
                } else {
                    Some(self.mask(&i, &j, false))
                };
                let p = self.fresh("pr");
                self.define(
                    p.clone(),
                    sax.clone(),
                    sidx.clone(),
                    E::Norm("softmax", Box::new(cur), j.clone(), w),
                    None,
                );
                self.mark(&p);
                let mut body = E::bin("*", E::Read(p, sidx.clone()), vread);
                if self.r.chance(0.2) {
                    // A third factor: a per-key gate.
                    let g = self.source(&[Ax::B, kv_seq, Ax::D]);
                    self.mark(&g);
                    body = E::bin(
                        "*",
                        body,
                        E::call(
                            "sigmoid",
                            vec![E::Read(g, vec![b.clone(), j.clone(), "0".into()])],
                        ),
                    );
                }
                self.define(
                    o.clone(),
                    oax,
                    oidx,
                    E::Red("sum", vec![j], Box::new(body), None),
                    None,
                );
            }
            1 if !cross => {
                // A plain causal sum of (a function of) the scores: linear
                // attention and its near misses.
                let w = self.mask(&i, &j, true);
                let a = self.fresh("a");
                self.define(a.clone(), sax.clone(), sidx.clone(), cur, None);
                self.mark(&a);
                let num = E::Red(
                    "sum",
                    vec![j.clone()],
                    Box::new(E::bin("*", E::Read(a.clone(), sidx.clone()), vread)),
                    Some(w.clone()),
                );
                let rhs = if self.r.chance(0.4) {
                    let den = E::Red("sum", vec![j], Box::new(E::Read(a, sidx.clone())), Some(w));
                    E::bin(
                        "/",
                        num,
                        E::bin("+", E::num(1.0), E::call("abs", vec![den])),
                    )
                } else {
                    E::bin("*", num, E::Atom("L ** -1.0".into()))
                };
                self.define(o.clone(), oax, oidx, rhs, None);
            }
            _ => {
                // Max-normalised scores, unmasked reduction over the keys.
                let red = self.r.pick(&["mean", "sum"]);
                let body = E::bin("*", E::call("tanh", vec![cur]), vread);
                let mut rhs = E::Red(red, vec![j.clone()], Box::new(body), None);
                if red == "sum" {
                    rhs = E::bin("*", rhs, E::Atom(format!("{} ** -1.0", kv_seq.extent())));
                }
                self.define(o.clone(), oax, oidx, rhs, None);
            }
        }
        o
    }

    /// A recurrence: a vector state with a constant or input-dependent
    /// decay, or a matrix state read out through a sum over its axis.
    fn recurrence(&mut self) -> String {
        let mut taken = Vec::new();
        if self.r.chance(0.6) {
            let axes = [Ax::B, Ax::L, Ax::D];
            let idx = self.names(&axes, &mut taken);
            let (b, t, d) = (idx[0].clone(), idx[1].clone(), idx[2].clone());
            let u = self.source(&axes);
            self.mark(&u);
            let coef = match self.r.below(4) {
                0 => {
                    let a = self.param("decay", &[Ax::D], "uniform(0.5, 0.95)");
                    E::Read(a, vec![d.clone()])
                }
                1 => {
                    let z = self.source(&axes);
                    self.mark(&z);
                    E::call(
                        "sigmoid",
                        vec![E::Read(z, vec![b.clone(), t.clone(), d.clone()])],
                    )
                }
                2 => E::num(0.9),
                _ => {
                    let z = self.source(&axes);
                    self.mark(&z);
                    E::call(
                        "exp",
                        vec![E::Neg(Box::new(E::call(
                            "softplus",
                            vec![E::Read(z, vec![b.clone(), t.clone(), d.clone()])],
                        )))],
                    )
                }
            };
            let name = self.fresh("h");
            let prev = E::Read(name.clone(), vec![b.clone(), format!("{t} - 1"), d.clone()]);
            let input = E::Read(u, idx.clone());
            let rhs = if self.r.chance(0.5) {
                E::bin("+", E::bin("*", coef, prev), input)
            } else {
                E::bin("+", input, E::bin("*", prev, coef))
            };
            self.define(name.clone(), axes.to_vec(), idx, rhs, None);
            name
        } else {
            // Matrix state S[b, t, h, e, f] and its readout.
            let k = self.source(&[Ax::B, Ax::L, Ax::H, Ax::E]);
            let v = self.source(&[Ax::B, Ax::L, Ax::H, Ax::E]);
            let q = self.source(&[Ax::B, Ax::L, Ax::H, Ax::E]);
            for t in [&k, &v, &q] {
                self.mark(t);
            }
            let idx = self.names(&[Ax::B, Ax::L, Ax::H, Ax::E, Ax::E], &mut taken);
            let (b, t, h, e, f) = (
                idx[0].clone(),
                idx[1].clone(),
                idx[2].clone(),
                idx[3].clone(),
                idx[4].clone(),
            );
            let g = if self.r.chance(0.5) {
                let gamma = self.fresh("gamma");
                self.define(
                    gamma.clone(),
                    vec![Ax::H],
                    vec!["hh: H".into()],
                    E::Atom("1 - 2 ** (-2 - hh)".into()),
                    None,
                );
                self.mark(&gamma);
                E::Read(gamma, vec![h.clone()])
            } else {
                let z = self.source(&[Ax::B, Ax::L, Ax::D]);
                self.mark(&z);
                E::call(
                    "sigmoid",
                    vec![E::Read(z, vec![b.clone(), t.clone(), "0".into()])],
                )
            };
            let s = self.fresh("S");
            let prev = E::Read(
                s.clone(),
                vec![
                    b.clone(),
                    format!("{t} - 1"),
                    h.clone(),
                    e.clone(),
                    f.clone(),
                ],
            );
            let upd = E::bin(
                "*",
                E::Read(k, vec![b.clone(), t.clone(), h.clone(), e.clone()]),
                E::Read(v, vec![b.clone(), t.clone(), h.clone(), f.clone()]),
            );
            self.define(
                s.clone(),
                vec![Ax::B, Ax::L, Ax::H, Ax::E, Ax::E],
                idx.clone(),
                E::bin("+", E::bin("*", g, prev), upd),
                None,
            );
            self.mark(&s);
            let o = self.fresh("ro");
            let body = E::bin(
                "*",
                E::Read(q, vec![b.clone(), t.clone(), h.clone(), e.clone()]),
                E::Read(s.clone(), idx.clone()),
            );
            let mut rhs = E::Red("sum", vec![e.clone()], Box::new(body), None);
            if self.r.chance(0.3) {
                // A second reader of the state.
                rhs = E::bin(
                    "+",
                    rhs,
                    E::bin(
                        "*",
                        E::num(0.1),
                        E::Read(
                            s,
                            vec![b.clone(), t.clone(), h.clone(), f.clone(), f.clone()],
                        ),
                    ),
                );
            }
            self.define(
                o.clone(),
                vec![Ax::B, Ax::L, Ax::H, Ax::E],
                vec![b, t, h, f],
                rhs,
                None,
            );
            o
        }
    }

    /// A causal convolution along the sequence: `conv(u, h)` with a
    /// parameter, computed or filter-block filter (long), or dilated
    /// short taps written as a sum.
    fn convolution(&mut self) -> String {
        let axes = [Ax::B, Ax::L, Ax::D];
        let mut taken = Vec::new();
        let idx = self.names(&axes, &mut taken);
        let (b, l, d) = (idx[0].clone(), idx[1].clone(), idx[2].clone());
        let mut u = self.source(&axes);
        self.mark(&u);
        if self.r.chance(0.3) {
            // A gated signal.
            let g = self.source(&axes);
            self.mark(&g);
            let gu = self.fresh("gu");
            self.define(
                gu.clone(),
                axes.to_vec(),
                idx.clone(),
                E::bin(
                    "*",
                    E::Read(u, idx.clone()),
                    E::call("sigmoid", vec![E::Read(g, idx.clone())]),
                ),
                None,
            );
            self.mark(&gu);
            u = gu;
        }
        let name = self.fresh("cv");
        let over = self
            .tensors
            .iter()
            .find(|t| t.name == u)
            .and_then(|t| {
                t.axes
                    .iter()
                    .position(|a| *a == Ax::L)
                    .and_then(|k| t.own.get(k))
            })
            .cloned();
        let Some(over) = over else {
            // A signal whose axis names are not known here (a called
            // mixer's output): a gated copy of it names them.
            let gu = self.fresh("gu");
            self.define(
                gu.clone(),
                axes.to_vec(),
                idx.clone(),
                E::Read(u, idx.clone()),
                None,
            );
            self.mark(&gu);
            return gu;
        };
        match self.r.below(5) {
            0 | 1 => {
                // Long convolution over a [L, D] filter.
                let h = match self.r.below(3) {
                    0 => self.param("filt", &[Ax::L, Ax::D], "normal(0, 0.1)"),
                    1 => {
                        let r = self.param("rate", &[Ax::D], "uniform(0.05, 0.5)");
                        let h = self.fresh("hf");
                        self.define(
                            h.clone(),
                            vec![Ax::L, Ax::D],
                            vec!["tt: L".into(), "dd".into()],
                            E::Atom(format!("exp(-{r}[dd] * tt) * cos(0.3 * tt + dd) * 0.3")),
                            None,
                        );
                        h
                    }
                    _ => self.filter_block(),
                };
                self.mark(&h);
                let mut rhs = E::Conv(u.clone(), h, over, idx.clone());
                if self.r.chance(0.5) {
                    let bias = self.param("skip", &[Ax::D], "normal(0, 1)");
                    rhs = E::bin(
                        "+",
                        rhs,
                        E::bin("*", E::Read(u, idx.clone()), E::Read(bias, vec![d.clone()])),
                    );
                }
                self.define(name.clone(), axes.to_vec(), idx, rhs, None);
            }
            2 => {
                // A short [K, D] filter through conv().
                let k = self.r.pick(&[2, 3, 4]);
                let h = self.param("sf", &[Ax::K(k), Ax::D], "normal(0, 0.5)");
                self.mark(&h);
                self.define(
                    name.clone(),
                    axes.to_vec(),
                    idx.clone(),
                    E::Conv(u, h, over, idx),
                    None,
                );
            }
            _ => {
                // Dilated taps, written out.
                let k = self.r.pick(&[2, 3, 4]);
                let dil = self.r.pick(&[1, 2, 3]);
                let w = self.param("tw", &[Ax::K(k), Ax::D], "normal(0, 0.5)");
                let tap = self.names(&[Ax::K(k)], &mut taken).remove(0);
                let shifted = if dil == 1 {
                    format!("{l} - {tap}")
                } else {
                    format!("{l} - {dil} * {tap}")
                };
                let guard = if dil == 1 {
                    format!("{tap} <= {l}")
                } else {
                    format!("{dil} * {tap} <= {l}")
                };
                let body = E::bin(
                    "*",
                    E::Read(w, vec![tap.clone(), d.clone()]),
                    E::Read(u, vec![b.clone(), shifted, d.clone()]),
                );
                self.define(
                    name.clone(),
                    axes.to_vec(),
                    idx,
                    E::Red(
                        "sum",
                        vec![format!("{tap}: {k}")],
                        Box::new(body),
                        Some(guard),
                    ),
                    None,
                );
            }
        }
        name
    }

    /// A `filter` item computing an `[L, D]` filter, called once.
    fn filter_block(&mut self) -> String {
        let fname = self.fresh("flt");
        self.items.push(format!(
            "filter {fname}(L, D) {{\n    config order = {}\n    param w1: [order, D] ~ normal(0, order ** -0.5)\n    param fr: [order] ~ uniform(0.5, 2)\n    feat[l: L, o: order] = sin(fr[o] * (l + 1) / L * pi)\n    h[l, d] = (sum(o) feat[l, o] * w1[o, d]) * exp(-3 * l / L)\n    return h\n}}",
            self.r.pick(&[4, 8])
        ));
        let h = self.fresh("h");
        self.stmts.push(Stmt {
            name: h.clone(),
            lhs: vec![],
            rhs: E::Atom(format!("{fname}(L, D)")),
            where_: None,
        });
        self.tensors.push(T {
            name: h.clone(),
            axes: vec![Ax::L, Ax::D],
            used: false,
            computed: false,
            own: vec!["l".into(), "d".into()],
        });
        h
    }

    /// A normaliser over a random axis of a computed tensor.
    fn normaliser(&mut self) -> String {
        let shapes: Vec<Vec<Ax>> =
            vec![vec![Ax::B, Ax::L, Ax::D], vec![Ax::B, Ax::L, Ax::H, Ax::E]];
        let axes = self.r.pick(&shapes);
        let src = self.source(&axes);
        self.mark(&src);
        let mut taken = Vec::new();
        let idx = self.names(&axes, &mut taken);
        let over_pos = self.r.below(axes.len());
        let kind = self
            .r
            .pick(&["rms_norm", "layer_norm", "softmax", "rms_norm"]);
        let mut inner = E::Read(src, idx.clone());
        if kind == "softmax" {
            inner = E::call("tanh", vec![inner]);
        }
        let name = self.fresh("nm");
        self.define(
            name.clone(),
            axes.clone(),
            idx.clone(),
            E::Norm(kind, Box::new(inner), idx[over_pos].clone(), None),
            None,
        );
        name
    }

    /// A call of the standard library's attention on a computed tensor.
    fn std_mixer_call(&mut self) -> String {
        let src = self.source(&[Ax::B, Ax::L, Ax::D]);
        self.mark(&src);
        if !self.items.iter().any(|i| i == "use std.attention") {
            self.items.push("use std.attention".into());
        }
        let name = self.fresh("att");
        let callee = "attention";
        self.stmts.push(Stmt {
            name: name.clone(),
            lhs: vec![],
            rhs: E::Atom(format!("{callee}({src})")),
            where_: None,
        });
        self.tensors.push(T {
            name: name.clone(),
            axes: vec![Ax::B, Ax::L, Ax::D],
            used: false,
            computed: true,
            own: vec![],
        });
        name
    }

    /// The output: every computed tensor nothing reads yet, brought to
    /// `[B, L, D]` (reducing other axes against a weight) and summed, so
    /// every statement is live.
    fn finish(&mut self) -> String {
        let loose: Vec<T> = self
            .tensors
            .iter()
            .filter(|t| t.computed && !t.used && t.axes.contains(&Ax::B) && t.axes.contains(&Ax::L))
            .cloned()
            .collect();
        let mut taken = Vec::new();
        let idx = self.names(&[Ax::B, Ax::L, Ax::D], &mut taken);
        let out: Vec<(Ax, String)> = [Ax::B, Ax::L, Ax::D]
            .into_iter()
            .zip(idx.iter().cloned())
            .collect();
        let mut terms = Vec::new();
        for t in loose.iter().rev().take(4) {
            let extra: Vec<Ax> = t
                .axes
                .iter()
                .copied()
                .filter(|a| !matches!(a, Ax::B | Ax::L))
                .collect();
            if extra == [Ax::D] {
                terms.push(self.plain_read(&t.name, &t.axes, &out));
                continue;
            }
            let names = self.names(&extra, &mut taken.clone());
            let mut full = vec![(Ax::B, idx[0].clone()), (Ax::L, idx[1].clone())];
            full.extend(extra.iter().copied().zip(names.iter().cloned()));
            let read = self.plain_read(&t.name, &t.axes, &full);
            let mut wax = extra.clone();
            wax.push(Ax::D);
            let fan: Vec<String> = extra.iter().map(|a| a.extent()).collect();
            let w = self.weight("wo", &wax, &fan.join(" * "));
            let mut wsubs = names.clone();
            wsubs.push(idx[2].clone());
            terms.push(E::Red(
                "sum",
                names,
                Box::new(E::bin("*", read, E::Read(w, wsubs))),
                None,
            ));
        }
        for t in &loose {
            self.mark(&t.name);
        }
        let rhs = match terms.len() {
            0 => self.expr(&out, 2),
            _ => {
                let mut it = terms.into_iter();
                let first = it.next().unwrap();
                it.fold(first, |a, b| E::bin("+", a, b))
            }
        };
        let name = self.fresh("y");
        self.define(name.clone(), vec![Ax::B, Ax::L, Ax::D], idx, rhs, None);
        name
    }
}

/// The program for `seed`.
pub fn program(seed: u64) -> Program {
    let mut g = Gen {
        r: Rng(seed ^ 0x6d69_7863),
        items: vec![],
        decls: vec![],
        stmts: vec![],
        tensors: vec![T {
            name: "x".into(),
            axes: vec![Ax::B, Ax::L, Ax::D],
            used: false,
            computed: false,
            own: vec!["b".into(), "l".into(), "d".into()],
        }],
        next: 0,
        fns: vec![],
        has_m: false,
        masks_used: false,
        big_done: false,
    };
    let mut extra_inputs = vec![];
    if g.r.chance(0.15) {
        g.has_m = true;
        extra_inputs.push("c: [B, M, D]".to_string());
        g.tensors.push(T {
            name: "c".into(),
            axes: vec![Ax::B, Ax::M, Ax::D],
            used: true,
            computed: false,
            own: vec!["b".into(), "m".into(), "d".into()],
        });
    }
    // User functions, some calling others.
    let fn_defs: &[(&str, usize, &str)] = &[
        ("phi", 1, "fn phi(z) = select(z > 0, z + 1, exp(z))"),
        ("sq", 1, "fn sq(a) = a * a"),
        ("gate", 2, "fn gate(a, b) = a * sigmoid(b)"),
        ("cap", 1, "fn cap(s) = 5 * tanh(s / 5)"),
        ("mix2", 2, "fn mix2(a, b) = gate(a, b) + 0.5 * cap(b)"),
    ];
    for (name, arity, def) in fn_defs {
        if g.r.chance(0.3) {
            if *name == "mix2" && !g.fns.iter().any(|f| f.0 == "gate") {
                g.items.push(fn_defs[2].2.to_string());
                g.fns.push(("gate", 2));
            }
            if *name == "mix2" && !g.fns.iter().any(|f| f.0 == "cap") {
                g.items.push(fn_defs[3].2.to_string());
                g.fns.push(("cap", 1));
            }
            if !g.fns.iter().any(|f| f.0 == *name) {
                g.items.push(def.to_string());
                g.fns.push((name, *arity));
            }
        }
    }
    let n = 1 + g.r.below(5);
    for _ in 0..n {
        match g.r.weighted(&[3, 4, 5, 3, 3, 2, 2, 1]) {
            0 => {
                let shapes = [
                    vec![Ax::B, Ax::L, Ax::D],
                    vec![Ax::B, Ax::L, Ax::H, Ax::E],
                    vec![Ax::B, Ax::L, Ax::D],
                ];
                let a = g.r.pick(&shapes);
                g.projection(&a);
            }
            1 => {
                let shapes = [
                    vec![Ax::B, Ax::L, Ax::D],
                    vec![Ax::B, Ax::L, Ax::H, Ax::E],
                    vec![Ax::B, Ax::L, Ax::D],
                ];
                let a = g.r.pick(&shapes);
                g.map(&a);
            }
            2 => {
                g.attention();
            }
            3 => {
                g.recurrence();
            }
            4 => {
                g.convolution();
            }
            5 => {
                g.normaliser();
            }
            6 => {
                let axes = vec![Ax::B, Ax::L, Ax::H];
                g.map(&axes);
            }
            _ => {
                g.std_mixer_call();
            }
        }
    }
    let ret = g.finish();
    if g.masks_used {
        g.items.insert(0, "use std.masks".into());
    }
    let mut decls = vec![format!("config H = {}", g.r.pick(&[1, 2, 4]))];
    decls.push("dim E = D / H".into());
    decls.append(&mut g.decls);
    // Keep the fixed decls first, then unique items.
    g.items.dedup();
    Program {
        items: g.items,
        extra_inputs,
        decls,
        stmts: g.stmts,
        ret,
    }
}

/// Sizes for a program: odd sizes, sizes below and above every tile,
/// head dims that hit tensor cores, and (rarely) lengths above the FFT
/// block, within a work budget so the slowest path stays fast.
pub fn shape(seed: u64, p: &Program) -> Shape {
    let mut r = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5151);
    let h: i64 = p
        .decls
        .iter()
        .find_map(|d| d.strip_prefix("config H = ").and_then(|v| v.parse().ok()))
        .unwrap_or(1);
    let text = p.text();
    let quadratic = text.contains("softmax")
        || text.contains("sum(j")
        || p.stmts
            .iter()
            .any(|s| s.lhs.len() == 4 && s.name.starts_with('s'));
    let mut e = r.pick(&[1, 2, 3, 4, 8, 16, 16, 16, 64, 64, 128]);
    // Head dims of 64 and 128 come with few heads: D stays at most 128.
    while h * e > 128 {
        e /= 2;
    }
    let mut d = h * e;
    let mut l = r.pick(&[1, 2, 5, 16, 17, 31, 33, 63, 64, 65, 100, 129, 130, 200]);
    if r.chance(0.03) && !quadratic {
        l = r.pick(&[2049, 2100, 4100]);
    }
    let mut b = r.pick(&[1, 1, 2, 3]);
    // Work budget: keep B * L * D (and L^2 for quadratic forms) small.
    let budget: i64 = if quadratic { 250_000 } else { 40_000 };
    // Projections cost B * L * D^2 whatever the mixer.
    let work = |b: i64, l: i64, d: i64| {
        let proj = b * l * d * d / 16;
        proj + if quadratic {
            b * l * l * d.max(8)
        } else {
            b * l * d.max(8)
        }
    };
    while work(b, l, d) > budget {
        if b > 1 {
            b -= 1;
        } else if d > h * 16 && d > 16 {
            d /= 2;
            // Keep E an integer.
            d -= d % h;
        } else if l > 33 {
            l = l * 2 / 3;
        } else {
            break;
        }
    }
    let mut sizes = BTreeMap::new();
    sizes.insert("B".to_string(), b);
    sizes.insert("L".to_string(), l);
    sizes.insert("D".to_string(), d.max(h));
    if !p.extra_inputs.is_empty() {
        sizes.insert("M".to_string(), r.pick(&[1, 7, 16, 40]));
    }
    Shape { sizes }
}

/// The case for `seed`.
pub fn case(seed: u64) -> Case {
    let program = program(seed);
    let shape = shape(seed, &program);
    Case {
        seed,
        program,
        shape,
    }
}
