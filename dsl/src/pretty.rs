//! A compact, stable S-expression form of the AST, for parser snapshots:
//! it shows the tree's structure (precedence, where `where` attached, what a
//! reduction's body is) without spans.

use crate::ast::*;
use std::fmt::Write;

pub fn file(f: &File) -> String {
    let mut out = String::new();
    for item in &f.items {
        item_to(&mut out, item);
        out.push('\n');
    }
    out
}

fn item_to(out: &mut String, item: &Item) {
    match item {
        Item::Use { path, .. } => {
            let p: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
            let _ = write!(out, "(use {})", p.join("."));
        }
        Item::Mask(f) | Item::Fn(f) => {
            let kw = if matches!(item, Item::Mask(_)) {
                "mask"
            } else {
                "fn"
            };
            let p: Vec<&str> = f.params.iter().map(|i| i.name.as_str()).collect();
            let _ = write!(
                out,
                "({kw} {} ({}) {})",
                f.name.name,
                p.join(" "),
                expr(&f.body)
            );
        }
        Item::Config(entries, _) => {
            out.push_str("(config");
            for (n, e) in entries {
                let _ = write!(out, " ({} {})", n.name, expr(e));
            }
            out.push(')');
        }
        Item::Block(b) => {
            let kw = match b.kind {
                BlockKind::Mixer => "mixer",
                BlockKind::Filter => "filter",
            };
            let _ = write!(out, "({kw} {} (", b.name.name);
            for (k, p) in b.params.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                match &p.shape {
                    Some(s) => {
                        let _ = write!(out, "({} {})", p.name.name, shape(s));
                    }
                    None => out.push_str(&p.name.name),
                }
            }
            out.push(')');
            if let Some(r) = &b.ret {
                let _ = write!(out, " -> {}", shape(r));
            }
            for s in &b.stmts {
                out.push_str("\n  ");
                stmt_to(out, s);
            }
            out.push(')');
        }
        Item::Error(_) => out.push_str("(error)"),
    }
}

fn shape(s: &Shape) -> String {
    let d: Vec<String> = s.dims.iter().map(expr).collect();
    format!("[{}]", d.join(" "))
}

fn stmt_to(out: &mut String, s: &Stmt) {
    match &s.kind {
        StmtKind::Config(entries) => {
            out.push_str("(config");
            for (n, e) in entries {
                let _ = write!(out, " ({} {})", n.name, expr(e));
            }
            out.push(')');
        }
        StmtKind::Dim(n, e) => {
            let _ = write!(out, "(dim {} {})", n.name, expr(e));
        }
        StmtKind::Param {
            name,
            shape: sh,
            init,
        } => {
            let _ = write!(out, "(param {} {} {})", name.name, shape(sh), expr(init));
        }
        StmtKind::Def {
            name,
            indices,
            value,
        } => {
            let lhs = match indices {
                None => name.name.clone(),
                Some(ix) => {
                    let parts: Vec<String> = ix
                        .iter()
                        .map(|d| match &d.extent {
                            Some(e) => format!("{}:{}", d.name.name, expr(e)),
                            None => d.name.name.clone(),
                        })
                        .collect();
                    format!("{}[{}]", name.name, parts.join(" "))
                }
            };
            let _ = write!(out, "(= {lhs} {})", expr(value));
        }
        StmtKind::Return(e) => {
            let _ = write!(out, "(return {})", expr(e));
        }
        StmtKind::Error => out.push_str("(error)"),
    }
}

pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Index(b, subs) => {
            let s: Vec<String> = subs.iter().map(expr).collect();
            format!("{}[{}]", expr(b), s.join(" "))
        }
        ExprKind::Call { func, args, body } => {
            let a: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}:{}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            match body {
                Some(b) => format!("({} ({}) {})", func.name, a.join(" "), expr(b)),
                None => format!("({} {})", func.name, a.join(" ")).replace(" )", ")"),
            }
        }
        ExprKind::Unary(UnOp::Neg, a) => format!("(neg {})", expr(a)),
        ExprKind::Unary(UnOp::Not, a) => format!("(not {})", expr(a)),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), expr(a), expr(b)),
        ExprKind::Where(a, p) => format!("(where {} {})", expr(a), expr(p)),
        ExprKind::Error => "(error)".into(),
        ExprKind::Masked(a, p) => format!("(masked {} {})", expr(a), expr(p)),
    }
}
