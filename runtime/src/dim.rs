//! Size arithmetic, shared by the compiler (which folds and checks sizes)
//! and the runners (which evaluate a bundle's shapes and launch grids).
//!
//! A bundle's manifest writes sizes as text in the compiler's own notation
//! (`B * L`, `(L + 127) // 128`, `max(L, 1)`); [`Dim::parse`] reads it back
//! and [`Dim::eval`] evaluates it with the same rules as the compiler.

use std::collections::BTreeMap;
use std::fmt;

/// A binary size operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    /// Exact division: an error unless it divides.
    Div,
    FloorDiv,
    Mod,
    Max,
    Min,
}

impl Arith {
    pub fn symbol(self) -> &'static str {
        match self {
            Arith::Add => "+",
            Arith::Sub => "-",
            Arith::Mul => "*",
            Arith::Div => "/",
            Arith::FloorDiv => "//",
            Arith::Mod => "%",
            Arith::Max => "max",
            Arith::Min => "min",
        }
    }

    /// `x op y`; overflow, inexact `/` and division by zero are errors.
    pub fn apply(self, x: i64, y: i64) -> Result<i64, String> {
        Ok(match self {
            Arith::Add => x.checked_add(y).ok_or("size overflow")?,
            Arith::Sub => x.checked_sub(y).ok_or("size overflow")?,
            Arith::Mul => x.checked_mul(y).ok_or("size overflow")?,
            Arith::Div => {
                if y == 0 || x % y != 0 {
                    return Err(format!("{x} is not divisible by {y}"));
                }
                x / y
            }
            Arith::FloorDiv => {
                if y == 0 {
                    return Err("division by zero".into());
                }
                x.div_euclid(y)
            }
            Arith::Mod => {
                if y == 0 {
                    return Err("modulo by zero".into());
                }
                x.rem_euclid(y)
            }
            Arith::Max => x.max(y),
            Arith::Min => x.min(y),
        })
    }
}

/// A size expression over named sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Const(i64),
    Sym(String),
    Bin(Arith, Box<Dim>, Box<Dim>),
}

impl Dim {
    pub fn eval(&self, sizes: &BTreeMap<String, i64>) -> Result<i64, String> {
        match self {
            Dim::Const(v) => Ok(*v),
            Dim::Sym(s) => sizes
                .get(s)
                .copied()
                .ok_or_else(|| format!("size `{s}` has no value")),
            Dim::Bin(op, a, b) => op.apply(a.eval(sizes)?, b.eval(sizes)?),
        }
    }

    /// Parses the notation [`fmt::Display`] writes.
    pub fn parse(text: &str) -> Result<Dim, String> {
        let toks = tokens(text)?;
        let mut p = Parser { toks, at: 0 };
        let d = p.sum()?;
        if p.at != p.toks.len() {
            return Err(format!("unexpected `{}` in size `{text}`", p.toks[p.at]));
        }
        Ok(d)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(v) => write!(f, "{v}"),
            Dim::Sym(s) => write!(f, "{s}"),
            Dim::Bin(op @ (Arith::Max | Arith::Min), a, b) => {
                write!(f, "{}({a}, {b})", op.symbol())
            }
            Dim::Bin(op, a, b) => {
                let wrap = |e: &Dim| match e {
                    Dim::Bin(..) => format!("({e})"),
                    _ => e.to_string(),
                };
                write!(f, "{} {} {}", wrap(a), op.symbol(), wrap(b))
            }
        }
    }
}

fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut k = 0;
    while k < cs.len() {
        let c = cs[k];
        if c.is_whitespace() {
            k += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            // A size of a mixer instance is qualified by the instance's
            // name (`att3.E`, from `att3 = attention(x)`).
            let s = k;
            while k < cs.len() && (cs[k].is_ascii_alphanumeric() || cs[k] == '_' || cs[k] == '.') {
                k += 1;
            }
            out.push(cs[s..k].iter().collect());
        } else if c == '/' && cs.get(k + 1) == Some(&'/') {
            out.push("//".into());
            k += 2;
        } else if "+-*/%(),".contains(c) {
            out.push(c.to_string());
            k += 1;
        } else {
            return Err(format!("unexpected `{c}` in size `{text}`"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(|s| s.as_str())
    }

    fn eat(&mut self, t: &str) -> Result<(), String> {
        if self.peek() == Some(t) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected `{t}` in a size expression"))
        }
    }

    fn sum(&mut self) -> Result<Dim, String> {
        let mut a = self.product()?;
        while let Some(op) = match self.peek() {
            Some("+") => Some(Arith::Add),
            Some("-") => Some(Arith::Sub),
            _ => None,
        } {
            self.at += 1;
            a = Dim::Bin(op, Box::new(a), Box::new(self.product()?));
        }
        Ok(a)
    }

    fn product(&mut self) -> Result<Dim, String> {
        let mut a = self.atom()?;
        while let Some(op) = match self.peek() {
            Some("*") => Some(Arith::Mul),
            Some("/") => Some(Arith::Div),
            Some("//") => Some(Arith::FloorDiv),
            Some("%") => Some(Arith::Mod),
            _ => None,
        } {
            self.at += 1;
            a = Dim::Bin(op, Box::new(a), Box::new(self.atom()?));
        }
        Ok(a)
    }

    fn atom(&mut self) -> Result<Dim, String> {
        let t = self
            .peek()
            .ok_or("a size expression ends too early")?
            .to_string();
        self.at += 1;
        if t == "(" {
            let d = self.sum()?;
            self.eat(")")?;
            return Ok(d);
        }
        if t == "-" {
            let d = self.atom()?;
            return Ok(Dim::Bin(Arith::Sub, Box::new(Dim::Const(0)), Box::new(d)));
        }
        if t == "max" || t == "min" {
            self.eat("(")?;
            let a = self.sum()?;
            self.eat(",")?;
            let b = self.sum()?;
            self.eat(")")?;
            let op = if t == "max" { Arith::Max } else { Arith::Min };
            return Ok(Dim::Bin(op, Box::new(a), Box::new(b)));
        }
        if let Ok(v) = t.parse::<i64>() {
            return Ok(Dim::Const(v));
        }
        if t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
        {
            return Ok(Dim::Sym(t));
        }
        Err(format!("unexpected `{t}` in a size expression"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        let sizes: BTreeMap<String, i64> = [("B".to_string(), 3), ("L".to_string(), 1000)]
            .into_iter()
            .collect();
        for (text, want) in [
            ("B * L", 3000),
            ("(B * L + 255) // 256", 12),
            ("max(L, 4096) - L % 7", 4096 - 1000 % 7),
            ("L / 8", 125),
            ("-2 + L", 998),
        ] {
            let d = Dim::parse(text).unwrap();
            assert_eq!(d.eval(&sizes).unwrap(), want, "{text}");
            assert_eq!(Dim::parse(&d.to_string()).unwrap(), d, "{text}");
        }
        assert!(Dim::parse("L / 3").unwrap().eval(&sizes).is_err());
        // Sizes of a mixer instance carry its name.
        let q: BTreeMap<String, i64> = [("att3.E".to_string(), 8)].into_iter().collect();
        let d = Dim::parse("(att3.E * 2) // 4").unwrap();
        assert_eq!(d.eval(&q).unwrap(), 4);
        assert_eq!(Dim::parse(&d.to_string()).unwrap(), d);
        assert!(Dim::parse("L +").is_err());
        assert!(Dim::parse("L $ 2").is_err());
    }
}
