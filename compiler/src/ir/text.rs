//! The IR's text form: one line per size, value and op, with S-expression
//! bodies. Printing, parsing and printing again gives the same text (spans
//! are not part of the text). Index variables print as `name@slot`, so
//! sibling reductions that reuse a name stay distinct.
//!
//! ```text
//! mixer attention
//! size B
//! size E = (/ D 8)
//! %0 = input x [B L D]
//! %1 = param wq [D 8 E] (normal 0 (** D (neg 0.5)))
//! %5 = contract q [b@0:B i@1:L h@2:8 e@3:E | d@4:D] (sum (d@4) (* (read %0 b@0 i@1 d@4) (read %1 d@4 h@2 e@3)))
//! return %9
//! ```

use super::*;
use mixc_dsl::typed::DimOp;
use std::fmt::Write;

pub fn print(m: &Module) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mixer {}", m.name);
    for s in &m.sizes {
        match &s.value {
            None => {
                let _ = writeln!(out, "size {}", s.name);
            }
            Some(v) => {
                let _ = writeln!(out, "size {} = {}", s.name, dim(v));
            }
        }
    }
    for (k, v) in m.values.iter().enumerate() {
        let shape: Vec<String> = v.shape.iter().map(dim).collect();
        let shape = shape.join(" ");
        match &v.def {
            ValueDef::Input => {
                let _ = writeln!(out, "%{k} = input {} [{shape}]", v.name);
            }
            ValueDef::Param(init) => {
                let init = match init {
                    Init::Normal { mean, std } => {
                        format!("(normal {} {})", expr(m, None, *mean), expr(m, None, *std))
                    }
                    Init::Uniform { lo, hi } => {
                        format!("(uniform {} {})", expr(m, None, *lo), expr(m, None, *hi))
                    }
                    Init::Constant(c) => format!("(constant {})", expr(m, None, *c)),
                };
                let _ = writeln!(out, "%{k} = param {} [{shape}] {init}", v.name);
            }
            ValueDef::Op(o) => {
                let op = m.op(*o);
                let kind = match op.recurrence {
                    Some(a) => format!("scan@{a}"),
                    None => op.kind.name().to_string(),
                };
                let slot =
                    |(s, iv): (usize, &IndexVar)| format!("{}@{s}:{}", iv.name, dim(&iv.extent));
                let lhs: Vec<String> = op
                    .slots
                    .iter()
                    .enumerate()
                    .take(op.rank)
                    .map(slot)
                    .collect();
                let inner: Vec<String> = op
                    .slots
                    .iter()
                    .enumerate()
                    .skip(op.rank)
                    .map(slot)
                    .collect();
                let slots = if inner.is_empty() {
                    lhs.join(" ")
                } else {
                    format!("{} | {}", lhs.join(" "), inner.join(" "))
                };
                let _ = writeln!(
                    out,
                    "%{k} = {kind} {} [{slots}] {}",
                    v.name,
                    expr(m, Some(op), op.body)
                );
            }
        }
    }
    let _ = writeln!(out, "return {}", m.output);
    out
}

pub fn dim(d: &DimExpr) -> String {
    match d {
        DimExpr::Const(v) => v.to_string(),
        DimExpr::Sym(s) => s.clone(),
        DimExpr::Bin(op, a, b) => format!("({} {} {})", op.symbol(), dim(a), dim(b)),
    }
}

fn num(v: f64, ty: Ty) -> String {
    match ty {
        Ty::Bool => (if v != 0.0 { "true" } else { "false" }).into(),
        Ty::Int if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        _ => format!("{v:?}"),
    }
}

fn slot_name(op: Option<&Op>, s: Slot) -> String {
    let name = op
        .and_then(|o| o.slots.get(s as usize))
        .map(|iv| iv.name.as_str())
        .unwrap_or("?");
    format!("{name}@{s}")
}

pub fn red_name(op: RedOp) -> &'static str {
    match op {
        RedOp::Sum => "sum",
        RedOp::Mean => "mean",
        RedOp::Max => "max",
        RedOp::Min => "min",
        RedOp::Prod => "prod",
    }
}

pub fn norm_name(op: NormOp) -> &'static str {
    match op {
        NormOp::Softmax => "softmax",
        NormOp::RmsNorm => "rms_norm",
        NormOp::LayerNorm => "layer_norm",
    }
}

fn bin_name(op: BinOp) -> &'static str {
    op.symbol()
}

/// One expression as an S-expression.
pub fn expr(m: &Module, op: Option<&Op>, e: ExprId) -> String {
    let n = m.expr(e);
    let x = |e: ExprId| expr(m, op, e);
    match &n.node {
        Node::Const(v) => num(*v, n.ty),
        Node::Size(d) => format!("(size {})", dim(d)),
        Node::Index(s) => slot_name(op, *s),
        Node::Read(v, subs) => {
            let s: Vec<String> = subs.iter().map(|s| x(*s)).collect();
            format!(
                "(read {v}{}{})",
                if s.is_empty() { "" } else { " " },
                s.join(" ")
            )
        }
        Node::Unary(UnOp::Neg, a) => format!("(neg {})", x(*a)),
        Node::Unary(UnOp::Not, a) => format!("(not {})", x(*a)),
        Node::Binary(o, a, b) => format!("({} {} {})", bin_name(*o), x(*a), x(*b)),
        Node::Call(f, args) => {
            let a: Vec<String> = args.iter().map(|a| x(*a)).collect();
            format!("({} {})", f.name(), a.join(" "))
        }
        Node::Reduce {
            op: r,
            slots,
            guard,
            body,
        } => {
            let s: Vec<String> = slots.iter().map(|s| slot_name(op, *s)).collect();
            let g = guard
                .map(|g| format!(" (where {})", x(g)))
                .unwrap_or_default();
            format!("({} ({}){g} {})", red_name(*r), s.join(" "), x(*body))
        }
        Node::Normalize {
            op: o,
            slot,
            guard,
            body,
            eps,
        } => {
            let g = guard
                .map(|g| format!(" (where {})", x(g)))
                .unwrap_or_default();
            format!(
                "({} {} {eps:?}{g} {})",
                norm_name(*o),
                slot_name(op, *slot),
                x(*body)
            )
        }
        Node::Guard(p, b) => format!("(guard {} {})", x(*p), x(*b)),
    }
}

// ----- parsing -----

/// A parse error in IR text: the line and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("IR text line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Sx {
    Atom(String),
    List(Vec<Sx>),
    Bracket(Vec<Sx>),
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if c.is_whitespace() || "()[]".contains(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn read_sx(toks: &[String], pos: &mut usize) -> Result<Sx, String> {
    let t = toks.get(*pos).ok_or("unexpected end of line")?;
    *pos += 1;
    match t.as_str() {
        "(" | "[" => {
            let close = if t == "(" { ")" } else { "]" };
            let mut items = Vec::new();
            loop {
                match toks.get(*pos) {
                    None => return Err(format!("missing `{close}`")),
                    Some(c) if c == close => {
                        *pos += 1;
                        break;
                    }
                    Some(_) => items.push(read_sx(toks, pos)?),
                }
            }
            Ok(if close == ")" {
                Sx::List(items)
            } else {
                Sx::Bracket(items)
            })
        }
        ")" | "]" => Err(format!("unexpected `{t}`")),
        _ => Ok(Sx::Atom(t.clone())),
    }
}

fn parse_dim(s: &Sx) -> Result<DimExpr, String> {
    match s {
        Sx::Atom(a) => Ok(match a.parse::<i64>() {
            Ok(v) => DimExpr::Const(v),
            Err(_) => DimExpr::Sym(a.clone()),
        }),
        Sx::List(items) => {
            let [Sx::Atom(op), a, b] = items.as_slice() else {
                return Err("size expressions are (op a b)".into());
            };
            let op = match op.as_str() {
                "+" => DimOp::Add,
                "-" => DimOp::Sub,
                "*" => DimOp::Mul,
                "/" => DimOp::Div,
                "//" => DimOp::FloorDiv,
                "%" => DimOp::Mod,
                "max" => DimOp::Max,
                "min" => DimOp::Min,
                o => return Err(format!("unknown size operator `{o}`")),
            };
            Ok(DimExpr::Bin(
                op,
                Box::new(parse_dim(a)?),
                Box::new(parse_dim(b)?),
            ))
        }
        Sx::Bracket(_) => Err("unexpected `[`".into()),
    }
}

fn parse_slot(a: &str) -> Result<Slot, String> {
    a.rsplit_once('@')
        .and_then(|(_, s)| s.parse().ok())
        .ok_or_else(|| format!("expected an index `name@slot`, found `{a}`"))
}

fn parse_value_ref(a: &str) -> Result<ValueId, String> {
    a.strip_prefix('%')
        .and_then(|s| s.parse().ok())
        .map(ValueId)
        .ok_or_else(|| format!("expected a value `%N`, found `{a}`"))
}

fn parse_expr(m: &mut Module, s: &Sx) -> Result<ExprId, String> {
    let sp = Span::default();
    let add = |m: &mut Module, node: Node| {
        let ty = infer_ty(m, &node);
        m.add_expr(node, ty, sp)
    };
    match s {
        Sx::Atom(a) => {
            if a == "true" || a == "false" {
                return Ok(m.add_expr(Node::Const(f64::from(u8::from(a == "true"))), Ty::Bool, sp));
            }
            if a.contains('@') {
                return Ok(m.add_expr(Node::Index(parse_slot(a)?), Ty::Int, sp));
            }
            let is_int = !a.contains(['.', 'e', 'E', 'i', 'N']);
            let v: f64 = a
                .parse()
                .map_err(|_| format!("expected a number, found `{a}`"))?;
            Ok(m.add_expr(Node::Const(v), if is_int { Ty::Int } else { Ty::Real }, sp))
        }
        Sx::Bracket(_) => Err("unexpected `[` in an expression".into()),
        Sx::List(items) => {
            let Some(Sx::Atom(head)) = items.first() else {
                return Err("expected an operator".into());
            };
            let rest = &items[1..];
            let sub = |m: &mut Module, k: usize| -> Result<ExprId, String> {
                parse_expr(
                    m,
                    rest.get(k)
                        .ok_or_else(|| format!("`{head}` needs more operands"))?,
                )
            };
            let h = head.as_str();
            if h == "size" {
                let d = parse_dim(rest.first().ok_or("`size` needs a size")?)?;
                return Ok(m.add_expr(Node::Size(d), Ty::Int, sp));
            }
            if h == "read" {
                let Some(Sx::Atom(v)) = rest.first() else {
                    return Err("`read` needs a value".into());
                };
                let v = parse_value_ref(v)?;
                let mut subs = Vec::new();
                for k in 1..rest.len() {
                    subs.push(sub(m, k)?);
                }
                return Ok(add(m, Node::Read(v, subs)));
            }
            if h == "neg" || h == "not" {
                let a = sub(m, 0)?;
                let op = if h == "neg" { UnOp::Neg } else { UnOp::Not };
                return Ok(add(m, Node::Unary(op, a)));
            }
            if h == "guard" {
                let (p, b) = (sub(m, 0)?, sub(m, 1)?);
                return Ok(add(m, Node::Guard(p, b)));
            }
            if let Some(op) = [
                BinOp::Add,
                BinOp::Sub,
                BinOp::Mul,
                BinOp::Div,
                BinOp::FloorDiv,
                BinOp::Mod,
                BinOp::Pow,
                BinOp::Eq,
                BinOp::Ne,
                BinOp::Lt,
                BinOp::Le,
                BinOp::Gt,
                BinOp::Ge,
                BinOp::And,
                BinOp::Or,
            ]
            .into_iter()
            .find(|o| o.symbol() == h)
            {
                let (a, b) = (sub(m, 0)?, sub(m, 1)?);
                return Ok(add(m, Node::Binary(op, a, b)));
            }
            if let Some((f, _)) = Builtin::lookup(h) {
                let mut args = Vec::new();
                for k in 0..rest.len() {
                    args.push(sub(m, k)?);
                }
                return Ok(add(m, Node::Call(f, args)));
            }
            let guard_of = |m: &mut Module, s: Option<&Sx>| -> Result<Option<ExprId>, String> {
                match s {
                    Some(Sx::List(g)) if matches!(g.first(), Some(Sx::Atom(w)) if w == "where") => {
                        Ok(Some(parse_expr(m, g.get(1).ok_or("empty `where`")?)?))
                    }
                    _ => Ok(None),
                }
            };
            if let Some(r) = [RedOp::Sum, RedOp::Mean, RedOp::Max, RedOp::Min, RedOp::Prod]
                .into_iter()
                .find(|r| red_name(*r) == h)
            {
                let Some(Sx::List(sl)) = rest.first() else {
                    return Err(format!("`{h}` needs its indices"));
                };
                let slots = sl
                    .iter()
                    .map(|s| match s {
                        Sx::Atom(a) => parse_slot(a),
                        _ => Err("expected an index".into()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let guard = guard_of(m, rest.get(1))?;
                let body = parse_expr(
                    m,
                    rest.get(1 + usize::from(guard.is_some()))
                        .ok_or("missing body")?,
                )?;
                return Ok(add(
                    m,
                    Node::Reduce {
                        op: r,
                        slots,
                        guard,
                        body,
                    },
                ));
            }
            if let Some(o) = [NormOp::Softmax, NormOp::RmsNorm, NormOp::LayerNorm]
                .into_iter()
                .find(|o| norm_name(*o) == h)
            {
                let (Some(Sx::Atom(s)), Some(Sx::Atom(eps))) = (rest.first(), rest.get(1)) else {
                    return Err(format!("`{h}` needs an index and eps"));
                };
                let slot = parse_slot(s)?;
                let eps: f64 = eps.parse().map_err(|_| format!("bad eps `{eps}`"))?;
                let guard = guard_of(m, rest.get(2))?;
                let body = parse_expr(
                    m,
                    rest.get(2 + usize::from(guard.is_some()))
                        .ok_or("missing body")?,
                )?;
                return Ok(add(
                    m,
                    Node::Normalize {
                        op: o,
                        slot,
                        guard,
                        body,
                        eps,
                    },
                ));
            }
            Err(format!("unknown operator `{h}`"))
        }
    }
}

/// The type of a node from its children's types: the checker's rules.
pub fn infer_ty(m: &Module, node: &Node) -> Ty {
    let ty = |e: &ExprId| m.expr(*e).ty;
    match node {
        Node::Const(_) => Ty::Real,
        Node::Size(_) | Node::Index(_) => Ty::Int,
        Node::Read(..) => Ty::Real,
        Node::Unary(UnOp::Not, _) => Ty::Bool,
        Node::Unary(UnOp::Neg, a) => ty(a),
        Node::Binary(op, a, b) => match op {
            BinOp::And
            | BinOp::Or
            | BinOp::Eq
            | BinOp::Ne
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge => Ty::Bool,
            BinOp::Div | BinOp::Pow => Ty::Real,
            _ if ty(a) == Ty::Int && ty(b) == Ty::Int => Ty::Int,
            _ => Ty::Real,
        },
        Node::Call(f, args) => match f {
            Builtin::Select => match (ty(&args[1]), ty(&args[2])) {
                (Ty::Bool, Ty::Bool) => Ty::Bool,
                (Ty::Int, Ty::Int) => Ty::Int,
                _ => Ty::Real,
            },
            Builtin::Abs | Builtin::Min | Builtin::Max | Builtin::Relu
                if args.iter().all(|a| ty(a) == Ty::Int) =>
            {
                Ty::Int
            }
            Builtin::Floor | Builtin::Ceil => Ty::Int,
            _ => Ty::Real,
        },
        Node::Reduce {
            op: RedOp::Mean, ..
        } => Ty::Real,
        Node::Reduce { body, .. } => ty(body),
        Node::Normalize { .. } => Ty::Real,
        Node::Guard(_, b) => ty(b),
    }
}

/// Parses the text form. The result still needs [`super::verify::verify`].
pub fn parse(text: &str) -> Result<Module, ParseError> {
    let mut m = Module {
        name: String::new(),
        sizes: Vec::new(),
        values: Vec::new(),
        exprs: Vec::new(),
        ops: Vec::new(),
        inputs: Vec::new(),
        output: ValueId(u32::MAX),
    };
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        parse_line(&mut m, line).map_err(|message| ParseError {
            line: ln + 1,
            message,
        })?;
    }
    if m.output.0 == u32::MAX {
        return Err(ParseError {
            line: text.lines().count(),
            message: "missing `return`".into(),
        });
    }
    Ok(m)
}

fn parse_line(m: &mut Module, line: &str) -> Result<(), String> {
    let toks = tokenize(line);
    let word = |k: usize| toks.get(k).map(|s| s.as_str()).unwrap_or("");
    match word(0) {
        "mixer" => {
            m.name = word(1).to_string();
            Ok(())
        }
        "size" => {
            let value = if word(2) == "=" {
                let mut p = 3;
                Some(parse_dim(&read_sx(&toks, &mut p)?)?)
            } else {
                None
            };
            m.sizes.push(SizeDecl {
                name: word(1).to_string(),
                value,
                span: Span::default(),
            });
            Ok(())
        }
        "return" => {
            m.output = parse_value_ref(word(1))?;
            Ok(())
        }
        w if w.starts_with('%') => {
            let id = parse_value_ref(w)?;
            if id.0 as usize != m.values.len() {
                return Err(format!(
                    "values must be numbered in order; expected %{}",
                    m.values.len()
                ));
            }
            if word(1) != "=" {
                return Err("expected `=`".into());
            }
            let kind = word(2).to_string();
            let name = word(3).to_string();
            let mut p = 4;
            let Sx::Bracket(dims) = read_sx(&toks, &mut p)? else {
                return Err("expected a shape or index list `[...]`".into());
            };
            let def = match kind.as_str() {
                "input" => {
                    m.inputs.push(id);
                    ValueDef::Input
                }
                "param" => {
                    let Sx::List(init) = read_sx(&toks, &mut p)? else {
                        return Err("expected an initialiser".into());
                    };
                    let Some(Sx::Atom(f)) = init.first() else {
                        return Err("expected an initialiser".into());
                    };
                    let arg = |m: &mut Module, k: usize| {
                        parse_expr(m, init.get(k).ok_or("missing argument")?)
                    };
                    ValueDef::Param(match f.as_str() {
                        "normal" => Init::Normal {
                            mean: arg(m, 1)?,
                            std: arg(m, 2)?,
                        },
                        "uniform" => Init::Uniform {
                            lo: arg(m, 1)?,
                            hi: arg(m, 2)?,
                        },
                        "constant" => Init::Constant(arg(m, 1)?),
                        other => return Err(format!("unknown initialiser `{other}`")),
                    })
                }
                k => {
                    let (kind, recurrence) = match k.strip_prefix("scan@") {
                        Some(a) => (
                            OpKind::Scan,
                            Some(a.parse::<usize>().map_err(|_| "bad scan axis")?),
                        ),
                        None => (
                            OpKind::from_name(k).ok_or_else(|| format!("unknown op kind `{k}`"))?,
                            None,
                        ),
                    };
                    // Index list: `name@slot:extent ... | name@slot:extent ...`
                    let mut slots: Vec<IndexVar> = Vec::new();
                    let mut rank = None;
                    let mut q = 0;
                    while q < dims.len() {
                        match &dims[q] {
                            Sx::Atom(a) if a == "|" => {
                                rank = Some(slots.len());
                                q += 1;
                            }
                            Sx::Atom(a) => {
                                let (decl, ext_inline) = a.split_once(':').ok_or_else(|| {
                                    format!("expected `name@slot:extent`, found `{a}`")
                                })?;
                                let slot = parse_slot(decl)?;
                                if slot as usize != slots.len() {
                                    return Err(format!(
                                        "index slots must be numbered in order, found `{decl}`"
                                    ));
                                }
                                let name = decl
                                    .rsplit_once('@')
                                    .map(|x| x.0)
                                    .unwrap_or(decl)
                                    .to_string();
                                let extent = if ext_inline.is_empty() {
                                    q += 1;
                                    parse_dim(dims.get(q).ok_or("missing extent")?)?
                                } else {
                                    parse_dim(&Sx::Atom(ext_inline.to_string()))?
                                };
                                slots.push(IndexVar { name, extent });
                                q += 1;
                            }
                            _ => return Err("unexpected list in an index list".into()),
                        }
                    }
                    let rank = rank.unwrap_or(slots.len());
                    let body = parse_expr(m, &read_sx(&toks, &mut p)?)?;
                    let op_id = OpId(m.ops.len() as u32);
                    m.ops.push(Op {
                        result: id,
                        slots,
                        rank,
                        body,
                        recurrence,
                        kind,
                        span: Span::default(),
                    });
                    ValueDef::Op(op_id)
                }
            };
            let shape = match &def {
                ValueDef::Op(o) => {
                    let op = m.op(*o);
                    op.slots[..op.rank]
                        .iter()
                        .map(|s| s.extent.clone())
                        .collect()
                }
                _ => dims.iter().map(parse_dim).collect::<Result<_, _>>()?,
            };
            if p != toks.len() {
                return Err(format!("unexpected `{}` at the end of the line", toks[p]));
            }
            m.values.push(Value {
                name,
                shape,
                def,
                span: Span::default(),
            });
            Ok(())
        }
        w => Err(format!("unexpected `{w}`")),
    }
}
