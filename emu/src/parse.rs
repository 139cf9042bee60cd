//! A parser for the PTX that LLVM's NVPTX back end writes: module
//! directives, `.global` variables, `.entry` kernels with their
//! parameters, register, shared and local declarations, nested scopes
//! (inline assembly), labels and instructions, decoded into [`crate::ir`].

use crate::float::Rnd;
use crate::ir::*;
use crate::lex::{lex, Tok, Token};
use std::collections::HashMap;

/// An operand as written, registers resolved to slots.
#[derive(Clone, Debug)]
enum Opd {
    Reg(u32),
    Imm(u64),
    F32(u32),
    F64(u64),
    Sym(String),
    Vec(Vec<Opd>),
    Mem(Box<Opd>, i64),
    /// `%r1|%p1` (a destination and its predicate).
    Pipe(Box<Opd>, Box<Opd>),
}

struct Raw {
    guard: Option<(u32, bool)>,
    opcode: String,
    opds: Vec<Opd>,
    line: u32,
}

struct P<'a> {
    t: &'a [Token],
    i: usize,
}

impl P<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i).map(|t| &t.tok)
    }
    fn line(&self) -> u32 {
        self.t
            .get(self.i)
            .or(self.t.last())
            .map(|t| t.line)
            .unwrap_or(0)
    }
    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .t
            .get(self.i)
            .ok_or("unexpected end of the PTX text")?
            .tok
            .clone();
        self.i += 1;
        Ok(t)
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "line {}: expected `{c}`, found {:?}",
                self.line(),
                self.peek()
            ))
        }
    }
    fn word(&mut self) -> Result<String, String> {
        let line = self.line();
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(format!("line {line}: expected a name, found {t:?}")),
        }
    }
    fn int(&mut self) -> Result<u64, String> {
        let line = self.line();
        match self.next()? {
            Tok::Int(v) => Ok(v),
            t => Err(format!("line {line}: expected an integer, found {t:?}")),
        }
    }
    fn skip_to_semi(&mut self) -> Result<(), String> {
        while self.next()? != Tok::Punct(';') {}
        Ok(())
    }
}

/// Parses a PTX module.
pub fn parse(text: &str) -> Result<Module, String> {
    let toks = lex(text)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut p = P { t: &toks, i: 0 };
    let mut target = String::new();
    let mut kernels = Vec::new();
    let mut globals: Vec<GlobalVar> = Vec::new();
    while let Some(t) = p.peek().cloned() {
        let line = p.line();
        match t {
            Tok::Word(w) if w == ".version" || w == ".address_size" => {
                p.next()?;
                p.next()?;
                // `.version 8.0` lexes as `8` and `.0`.
                if let Some(Tok::Word(x)) = p.peek() {
                    if x.len() > 1 && x[1..].bytes().all(|c| c.is_ascii_digit()) {
                        p.next()?;
                    }
                }
            }
            Tok::Word(w) if w == ".target" => {
                p.next()?;
                target = p.word()?;
                while p.eat(',') {
                    p.word()?;
                }
            }
            Tok::Word(w) if w == ".visible" || w == ".weak" => {
                p.next()?;
            }
            Tok::Word(w) if w == ".extern" => {
                return Err(format!(
                    "line {line}: `.extern` declarations are not supported"
                ));
            }
            Tok::Word(w) if w == ".global" || w == ".const" => {
                p.next()?;
                globals.push(global_var(&mut p, line)?);
            }
            Tok::Word(w) if w == ".entry" => {
                p.next()?;
                kernels.push(kernel(&mut p, &globals, &lines)?);
            }
            Tok::Word(w) if w == ".func" => {
                return Err(format!(
                    "line {line}: device functions (`.func`) are not supported"
                ));
            }
            t => return Err(format!("line {line}: unexpected {t:?} at module level")),
        }
    }
    Ok(Module {
        target,
        kernels,
        globals,
    })
}

fn global_var(p: &mut P, line: u32) -> Result<GlobalVar, String> {
    let mut align = 1;
    let mut elem = 0u32;
    loop {
        let w = p.word()?;
        if w == ".align" {
            align = p.int()? as u32;
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            elem = u32::from(t.bits()).div_ceil(8);
        } else {
            let count = if p.eat('[') {
                let n = p.int()?;
                p.expect(']')?;
                n as usize
            } else {
                1
            };
            let mut init = vec![0u8; count * elem as usize];
            if p.eat('=') {
                p.expect('{')?;
                let mut k = 0;
                loop {
                    let v = p.int()?;
                    let b = v.to_le_bytes();
                    let e = elem as usize;
                    if (k + 1) * e > init.len() {
                        return Err(format!("line {line}: too many initialisers for `{w}`"));
                    }
                    init[k * e..(k + 1) * e].copy_from_slice(&b[..e]);
                    k += 1;
                    if !p.eat(',') {
                        break;
                    }
                }
                p.expect('}')?;
            }
            p.expect(';')?;
            return Ok(GlobalVar {
                name: w,
                align,
                init,
            });
        }
    }
}

struct Scopes {
    stack: Vec<HashMap<String, u32>>,
    next: u32,
    names: Vec<String>,
}

impl Scopes {
    fn lookup(&self, name: &str) -> Option<u32> {
        self.stack.iter().rev().find_map(|m| m.get(name).copied())
    }
    fn declare(&mut self, name: String) {
        let slot = self.next;
        self.next += 1;
        self.names.push(name.clone());
        self.stack.last_mut().expect("a scope").insert(name, slot);
    }
}

fn kernel(p: &mut P, globals: &[GlobalVar], lines: &[&str]) -> Result<Kernel, String> {
    let name = p.word()?;
    let mut params = Vec::new();
    let mut offset = 0u32;
    if p.eat('(') {
        while !p.eat(')') {
            let w = p.word()?;
            if w != ".param" {
                return Err(format!("line {}: expected `.param`, found `{w}`", p.line()));
            }
            let mut bytes = 0u32;
            let mut align = 0u32;
            loop {
                let w = p.word()?;
                if w == ".align" {
                    align = p.int()? as u32;
                } else if w == ".ptr" || w == ".global" || w == ".shared" {
                } else if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
                    bytes = u32::from(t.bits()).div_ceil(8);
                } else {
                    let count = if p.eat('[') {
                        let n = p.int()? as u32;
                        p.expect(']')?;
                        n
                    } else {
                        1
                    };
                    // `.align` on a pointer parameter is the pointee's.
                    let a = if count > 1 { align.max(bytes) } else { bytes };
                    offset = offset.div_ceil(a.max(1)) * a.max(1);
                    params.push(Param {
                        name: w,
                        offset,
                        bytes: bytes * count,
                    });
                    offset += bytes * count;
                    break;
                }
            }
            p.eat(',');
        }
    }
    let mut maxntid = None;
    loop {
        match p.peek() {
            Some(Tok::Punct('{')) => break,
            Some(Tok::Word(w)) if w == ".maxntid" || w == ".reqntid" => {
                p.next()?;
                let mut d = [1u32; 3];
                d[0] = p.int()? as u32;
                for x in d.iter_mut().skip(1) {
                    if p.eat(',') {
                        *x = p.int()? as u32;
                    }
                }
                maxntid = Some(d);
            }
            Some(_) => {
                p.next()?;
            }
            None => return Err("unexpected end of the PTX text".into()),
        }
    }
    p.expect('{')?;
    let mut scopes = Scopes {
        stack: vec![HashMap::new()],
        next: 0,
        names: Vec::new(),
    };
    for s in SPECIALS {
        scopes.declare(s.to_string());
    }
    scopes.declare("%cc".into());
    let mut shared: Vec<SharedVar> = Vec::new();
    let mut shared_bytes = 0u32;
    let mut locals: HashMap<String, u32> = HashMap::new();
    let mut local_bytes = 0u32;
    let mut labels: HashMap<String, u32> = HashMap::new();
    let mut raws: Vec<Raw> = Vec::new();
    let mut depth = 1;
    while depth > 0 {
        let line = p.line();
        let t = p.next()?;
        match t {
            Tok::Punct('{') => {
                depth += 1;
                scopes.stack.push(HashMap::new());
            }
            Tok::Punct('}') => {
                depth -= 1;
                scopes.stack.pop();
            }
            Tok::Word(w) if w == ".reg" => {
                let _ty = p.word()?;
                loop {
                    let n = p.word()?;
                    if p.eat('<') {
                        let count = p.int()?;
                        p.expect('>')?;
                        for k in 0..count {
                            scopes.declare(format!("{n}{k}"));
                        }
                    } else {
                        scopes.declare(n);
                    }
                    if !p.eat(',') {
                        break;
                    }
                }
                p.expect(';')?;
            }
            Tok::Word(w) if w == ".shared" || w == ".local" => {
                let mut align = 1u32;
                let mut elem = 1u32;
                let var = loop {
                    let x = p.word()?;
                    if x == ".align" {
                        align = p.int()? as u32;
                    } else if let Some(t) = x.strip_prefix('.').and_then(Ty::parse) {
                        elem = u32::from(t.bits()).div_ceil(8);
                    } else {
                        break x;
                    }
                };
                let count = if p.eat('[') {
                    let n = p.int()? as u32;
                    p.expect(']')?;
                    n
                } else {
                    1
                };
                p.expect(';')?;
                let bytes = elem * count;
                if w == ".shared" {
                    let off = shared_bytes.div_ceil(align) * align;
                    shared.push(SharedVar {
                        name: var,
                        offset: off,
                        bytes,
                    });
                    shared_bytes = off + bytes;
                } else {
                    let off = local_bytes.div_ceil(align) * align;
                    locals.insert(var, off);
                    local_bytes = off + bytes;
                }
            }
            Tok::Word(w) if w == ".pragma" => p.skip_to_semi()?,
            Tok::Word(w) if p.peek() == Some(&Tok::Punct(':')) && !w.starts_with('.') => {
                p.next()?;
                labels.insert(w, raws.len() as u32);
            }
            Tok::Punct('@') => {
                let neg = p.eat('!');
                let pn = p.word()?;
                let slot = scopes
                    .lookup(&pn)
                    .ok_or_else(|| format!("line {line}: unknown predicate `{pn}`"))?;
                let opcode = p.word()?;
                let opds = operands(p, &scopes)?;
                raws.push(Raw {
                    guard: Some((slot, neg)),
                    opcode,
                    opds,
                    line,
                });
            }
            Tok::Word(opcode) => {
                let opds = operands(p, &scopes)?;
                raws.push(Raw {
                    guard: None,
                    opcode,
                    opds,
                    line,
                });
            }
            t => return Err(format!("line {line}: unexpected {t:?} in kernel `{name}`")),
        }
    }
    let ctx = Ctx {
        labels: &labels,
        shared: &shared,
        locals: &locals,
        params: &params,
        globals,
    };
    let mut code = Vec::with_capacity(raws.len());
    for r in &raws {
        let op = decode(r, &ctx)
            .map_err(|e| format!("kernel `{name}`, line {}: `{}`: {e}", r.line, r.opcode))?;
        code.push(Instr {
            op,
            guard: r.guard,
            line: r.line,
            text: lines
                .get(r.line as usize - 1)
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| r.opcode.clone()),
        });
    }
    Ok(Kernel {
        name,
        params,
        param_bytes: offset,
        slots: scopes.next,
        reg_names: scopes.names,
        code,
        shared,
        shared_bytes,
        local_bytes,
        maxntid,
    })
}

fn operands(p: &mut P, scopes: &Scopes) -> Result<Vec<Opd>, String> {
    let mut out = Vec::new();
    if p.eat(';') {
        return Ok(out);
    }
    loop {
        out.push(operand(p, scopes)?);
        if p.eat(';') {
            return Ok(out);
        }
        p.expect(',')?;
    }
}

fn operand(p: &mut P, scopes: &Scopes) -> Result<Opd, String> {
    let line = p.line();
    if p.eat('{') {
        let mut v = Vec::new();
        loop {
            v.push(operand(p, scopes)?);
            if p.eat('}') {
                return Ok(Opd::Vec(v));
            }
            p.expect(',')?;
        }
    }
    if p.eat('[') {
        let base = match p.peek() {
            Some(Tok::Int(_)) => Opd::Imm(p.int()?),
            _ => name(p.word()?, scopes),
        };
        let mut off = 0i64;
        if p.eat('+') {
            let neg = p.eat('-');
            let v = p.int()? as i64;
            off = if neg { -v } else { v };
        } else if p.eat('-') {
            off = -(p.int()? as i64);
        }
        p.expect(']')?;
        return Ok(Opd::Mem(Box::new(base), off));
    }
    let neg = p.eat('-');
    let o = match p.next()? {
        Tok::Int(v) => Opd::Imm(if neg {
            (v as i64).wrapping_neg() as u64
        } else {
            v
        }),
        Tok::F32(b) => Opd::F32(if neg { b ^ 0x8000_0000 } else { b }),
        Tok::F64(b) => Opd::F64(if neg { b ^ (1 << 63) } else { b }),
        Tok::Word(w) if !neg => name(w, scopes),
        t => return Err(format!("line {line}: unexpected operand {t:?}")),
    };
    if p.eat('|') {
        let q = name(p.word()?, scopes);
        return Ok(Opd::Pipe(Box::new(o), Box::new(q)));
    }
    Ok(o)
}

fn name(w: String, scopes: &Scopes) -> Opd {
    match scopes.lookup(&w) {
        Some(s) => Opd::Reg(s),
        None => Opd::Sym(w),
    }
}

struct Ctx<'a> {
    labels: &'a HashMap<String, u32>,
    shared: &'a [SharedVar],
    locals: &'a HashMap<String, u32>,
    params: &'a [Param],
    globals: &'a [GlobalVar],
}

impl Ctx<'_> {
    /// A source operand: a register, an immediate of a `bits`-wide type,
    /// or the address of a variable.
    fn src(&self, o: &Opd, ty: Ty) -> Result<Src, String> {
        let bits = ty.bits();
        let mask = |v: u64| {
            if bits >= 64 {
                v
            } else {
                v & ((1u64 << bits) - 1)
            }
        };
        Ok(match o {
            Opd::Reg(r) => Src::Reg(*r),
            Opd::Imm(v) => match ty {
                // An integer literal as a float operand is its value.
                Ty::F32 => Src::Imm(u64::from((*v as i64 as f32).to_bits())),
                Ty::F64 => Src::Imm((*v as i64 as f64).to_bits()),
                Ty::Pred => Src::Imm(u64::from(*v != 0)),
                _ => Src::Imm(mask(*v)),
            },
            Opd::F32(b) => match ty {
                Ty::F64 => Src::Imm(f64::from(f32::from_bits(*b)).to_bits()),
                _ => Src::Imm(u64::from(*b)),
            },
            Opd::F64(b) => match ty {
                Ty::F32 => Src::Imm(u64::from((f64::from_bits(*b) as f32).to_bits())),
                _ => Src::Imm(*b),
            },
            Opd::Sym(s) => self.addr_of(s)?,
            _ => return Err(format!("expected a scalar operand, found {o:?}")),
        })
    }

    fn addr_of(&self, s: &str) -> Result<Src, String> {
        if let Some(v) = self.shared.iter().find(|v| v.name == s) {
            return Ok(Src::Imm(u64::from(v.offset)));
        }
        if let Some(off) = self.locals.get(s) {
            return Ok(Src::Imm(u64::from(*off)));
        }
        if let Some(k) = self.globals.iter().position(|g| g.name == s) {
            return Ok(Src::Glob(k as u32));
        }
        Err(format!("unknown name `{s}`"))
    }

    fn dst(&self, o: &Opd) -> Result<u32, String> {
        match o {
            Opd::Reg(r) => Ok(*r),
            _ => Err(format!("expected a register destination, found {o:?}")),
        }
    }

    fn vec<const N: usize>(&self, o: &Opd, ty: Ty) -> Result<[Src; N], String> {
        match o {
            Opd::Vec(v) if v.len() == N => {
                let mut out = [Src::Imm(0); N];
                for (x, o) in out.iter_mut().zip(v) {
                    *x = self.src(o, ty)?;
                }
                Ok(out)
            }
            _ => Err(format!("expected a vector of {N}, found {o:?}")),
        }
    }

    fn dvec<const N: usize>(&self, o: &Opd) -> Result<[u32; N], String> {
        match o {
            Opd::Vec(v) if v.len() == N => {
                let mut out = [0u32; N];
                for (x, o) in out.iter_mut().zip(v) {
                    *x = self.dst(o)?;
                }
                Ok(out)
            }
            _ => Err(format!("expected a vector of {N} registers, found {o:?}")),
        }
    }
}

fn rnd(mods: &[&str]) -> Option<Rnd> {
    mods.iter().find_map(|m| match *m {
        "rn" => Some(Rnd::Rn),
        "rz" => Some(Rnd::Rz),
        "rm" => Some(Rnd::Rm),
        "rp" => Some(Rnd::Rp),
        _ => None,
    })
}

fn irnd(mods: &[&str]) -> Option<Rnd> {
    mods.iter().find_map(|m| match *m {
        "rni" => Some(Rnd::Rn),
        "rzi" => Some(Rnd::Rz),
        "rmi" => Some(Rnd::Rm),
        "rpi" => Some(Rnd::Rp),
        _ => None,
    })
}

fn decode(r: &Raw, c: &Ctx) -> Result<Op, String> {
    let parts: Vec<&str> = r.opcode.split('.').collect();
    let base = parts[0];
    let mods = &parts[1..];
    let types: Vec<Ty> = mods.iter().filter_map(|m| Ty::parse(m)).collect();
    let has = |m: &str| mods.contains(&m);
    let o = &r.opds;
    let n = |k: usize| -> Result<(), String> {
        if o.len() == k {
            Ok(())
        } else {
            Err(format!("expected {k} operands, found {}", o.len()))
        }
    };
    let unsupported = || Err("instruction not implemented by the emulator".to_string());
    let ty = types.last().copied();
    let alu = |f: Alu, t: Ty, k: usize| -> Result<Op, String> {
        n(k + 1)?;
        let d = c.dst(&o[0])?;
        let mut s = [Src::Imm(0); 3];
        for j in 0..k {
            s[j] = c.src(&o[j + 1], t)?;
        }
        Ok(Op::Alu { f, d, s })
    };
    match base {
        "mov" => {
            let t = ty.ok_or("no type")?;
            match o.get(1) {
                // `mov.b32 d, {a, b}`: two halves packed, `a` the low one.
                Some(v @ Opd::Vec(_)) => {
                    n(2)?;
                    let half = Ty::B(t.bits() / 2);
                    let [a, b] = c.vec::<2>(v, half)?;
                    Ok(Op::Alu {
                        f: Alu::Pack(t.bits() / 2),
                        d: c.dst(&o[0])?,
                        s: [a, b, Src::Imm(0)],
                    })
                }
                _ => match o.first() {
                    // `mov.b32 {a, b}, s`: the halves unpacked.
                    Some(Opd::Vec(v)) if v.len() == 2 => {
                        n(2)?;
                        Ok(Op::Unpack {
                            d: [c.dst(&v[0])?, c.dst(&v[1])?],
                            s: c.src(&o[1], t)?,
                            w: t.bits() / 2,
                        })
                    }
                    _ => alu(Alu::Mov, t, 1),
                },
            }
        }
        "add" | "sub" | "mul" | "mad" | "fma" | "div" | "rem" | "min" | "max" | "abs" | "neg"
        | "rcp" | "sqrt" | "ex2" | "rsqrt" | "lg2" | "sin" | "cos" | "tanh" => {
            let t = ty.ok_or("no type")?;
            if t.is_float() {
                let fop = match base {
                    "add" => FOp::Add,
                    "sub" => FOp::Sub,
                    "mul" => FOp::Mul,
                    "fma" | "mad" => FOp::Fma,
                    "div" => FOp::Div,
                    "min" => FOp::Min,
                    "max" => FOp::Max,
                    "abs" => FOp::Abs,
                    "neg" => FOp::Neg,
                    "rcp" => FOp::Rcp,
                    "sqrt" => FOp::Sqrt,
                    "ex2" => FOp::Ex2,
                    "rsqrt" => FOp::Rsqrt,
                    "lg2" => FOp::Lg2,
                    "sin" => FOp::Sin,
                    "cos" => FOp::Cos,
                    "tanh" => FOp::Tanh,
                    _ => return unsupported(),
                };
                let approx = has("approx");
                let mode = rnd(mods);
                // Which forms exist: approximate ones and the rest.
                match fop {
                    FOp::Ex2 | FOp::Rsqrt | FOp::Lg2 | FOp::Sin | FOp::Cos | FOp::Tanh
                        if !approx =>
                    {
                        return unsupported()
                    }
                    FOp::Sqrt | FOp::Rcp | FOp::Div if !approx && mode.is_none() => {
                        return Err("needs a rounding modifier or .approx".into())
                    }
                    FOp::Fma if mode.is_none() => return Err("needs a rounding modifier".into()),
                    _ => {}
                }
                if has("full") {
                    return unsupported();
                }
                let k = match fop {
                    FOp::Fma => 3,
                    FOp::Add | FOp::Sub | FOp::Mul | FOp::Div | FOp::Min | FOp::Max => 2,
                    _ => 1,
                };
                let mode = mode.unwrap_or(Rnd::Rn);
                let f = match t {
                    Ty::F32 => Alu::F32(fop, mode, has("ftz"), has("sat")),
                    Ty::F64 => {
                        if approx || mode != Rnd::Rn || has("ftz") || has("sat") {
                            return unsupported();
                        }
                        Alu::F64(fop, mode)
                    }
                    Ty::F16 | Ty::Bf16 => {
                        if mode != Rnd::Rn
                            || has("ftz")
                            || has("sat")
                            || has("NaN")
                            || has("xorsign")
                            || !matches!(
                                fop,
                                FOp::Add
                                    | FOp::Sub
                                    | FOp::Mul
                                    | FOp::Fma
                                    | FOp::Neg
                                    | FOp::Abs
                                    | FOp::Min
                                    | FOp::Max
                            )
                        {
                            return unsupported();
                        }
                        Alu::H(fop, t == Ty::Bf16)
                    }
                    _ => return unsupported(),
                };
                return alu(f, t, k);
            }
            let w = t.bits();
            let s = t.is_signed();
            if base == "mad" && has("cc") {
                return carry(r, c, mods);
            }
            let f = match base {
                "add" | "sub" if has("cc") || has("sat") => return unsupported(),
                "add" => Alu::Add(w),
                "sub" => Alu::Sub(w),
                "mul" if has("wide") => Alu::MulWide(w, s),
                "mul" if has("hi") => Alu::MulHi(w, s),
                "mul" if has("lo") => Alu::MulLo(w),
                "mad" if has("lo") => Alu::MadLo(w),
                "mad" if has("wide") => Alu::MadWide(w, s),
                "div" => Alu::Div(w, s),
                "rem" => Alu::Rem(w, s),
                "min" => Alu::Min(w, s),
                "max" => Alu::Max(w, s),
                "abs" => Alu::Abs(w),
                "neg" => Alu::Neg(w),
                _ => return unsupported(),
            };
            let k = match f {
                Alu::MadLo(_) | Alu::MadWide(..) => 3,
                Alu::Abs(_) | Alu::Neg(_) => 1,
                _ => 2,
            };
            alu(f, t, k)
        }
        "madc" => carry(r, c, mods),
        "and" | "or" | "xor" | "not" => {
            let t = ty.ok_or("no type")?;
            let w = t.bits();
            let f = match base {
                "and" => Alu::And(w),
                "or" => Alu::Or(w),
                "xor" => Alu::Xor(w),
                _ => Alu::Not(w),
            };
            alu(f, t, if base == "not" { 1 } else { 2 })
        }
        "shl" | "shr" => {
            let t = ty.ok_or("no type")?;
            n(3)?;
            let f = if base == "shl" {
                Alu::Shl(t.bits())
            } else {
                Alu::Shr(t.bits(), t.is_signed())
            };
            Ok(Op::Alu {
                f,
                d: c.dst(&o[0])?,
                s: [c.src(&o[1], t)?, c.src(&o[2], Ty::U(32))?, Src::Imm(0)],
            })
        }
        "bfe" => {
            let t = ty.ok_or("no type")?;
            n(4)?;
            Ok(Op::Alu {
                f: Alu::Bfe(t.bits(), t.is_signed()),
                d: c.dst(&o[0])?,
                s: [
                    c.src(&o[1], t)?,
                    c.src(&o[2], Ty::U(32))?,
                    c.src(&o[3], Ty::U(32))?,
                ],
            })
        }
        "prmt" => {
            // Only the default mode (no .f4e, .b4e, .rc8, ...).
            if mods != ["b32"] {
                return unsupported();
            }
            alu(Alu::Prmt, Ty::B(32), 3)
        }
        "popc" => {
            let t = ty.ok_or("no type")?;
            alu(Alu::Popc(t.bits()), t, 1)
        }
        "shf" => {
            if ty != Some(Ty::B(32)) {
                return unsupported();
            }
            let left = has("l");
            if !left && !has("r") {
                return unsupported();
            }
            alu(
                Alu::Shf {
                    left,
                    wrap: has("wrap"),
                },
                Ty::B(32),
                3,
            )
        }
        "setp" => {
            let t = ty.ok_or("no type")?;
            let cmp = mods
                .iter()
                .find_map(|m| Cmp::parse(m))
                .ok_or("no comparison")?;
            if o.len() != 3 {
                // `setp.op.and` etc. and the two-destination form.
                return unsupported();
            }
            if !t.is_float()
                && !matches!(
                    cmp,
                    Cmp::Eq | Cmp::Ne | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge
                )
            {
                return Err("unordered comparison of integers".into());
            }
            alu(Alu::Setp(cmp, t, has("ftz")), t, 2)
        }
        "selp" => {
            let t = ty.ok_or("no type")?;
            n(4)?;
            Ok(Op::Alu {
                f: Alu::Selp,
                d: c.dst(&o[0])?,
                s: [c.src(&o[1], t)?, c.src(&o[2], t)?, c.src(&o[3], Ty::Pred)?],
            })
        }
        "cvt" if has("bf16x2") || has("f16x2") => {
            let ok = mods.len() == 3 && has("rn") && has("f32");
            if !ok {
                return unsupported();
            }
            alu(Alu::CvtPack(has("bf16x2")), Ty::F32, 2)
        }
        "cvt" => {
            if types.len() != 2 {
                return Err("cvt needs two types".into());
            }
            let cv = Cvt {
                dst: types[0],
                src: types[1],
                rnd: rnd(mods),
                irnd: irnd(mods),
                sat: has("sat"),
                ftz: has("ftz"),
            };
            check_cvt(&cv)?;
            alu(Alu::Cvt(cv), types[1], 1)
        }
        "cvta" => {
            // Global addresses are generic as they are; shared and local
            // ones move into their windows.
            let window = if has("global") {
                0
            } else if has("shared") || has("shared::cta") {
                SHARED_WINDOW
            } else if has("local") {
                LOCAL_WINDOW
            } else {
                return unsupported();
            };
            if ty != Some(Ty::U(64)) {
                return unsupported();
            }
            n(2)?;
            let a = c.src(&o[1], Ty::U(64))?;
            let f = if has("to") {
                Alu::Sub(64)
            } else {
                Alu::Add(64)
            };
            Ok(Op::Alu {
                f,
                d: c.dst(&o[0])?,
                s: [a, Src::Imm(window), Src::Imm(0)],
            })
        }
        "ld" | "st" => {
            let space = if has("global") {
                Some(Space::Global)
            } else if has("shared") || has("shared::cta") {
                Some(Space::Shared)
            } else if has("local") {
                Some(Space::Local)
            } else if has("param") {
                None
            } else {
                Some(Space::Generic)
            };
            if has("volatile") || has("relaxed") || has("acquire") || has("release") {
                return unsupported();
            }
            let t = ty.ok_or("no type")?;
            let bytes = t.bits().div_ceil(8);
            let nvec: u8 = if has("v2") {
                2
            } else if has("v4") {
                4
            } else {
                1
            };
            n(2)?;
            let (data, addr) = if base == "ld" {
                (&o[0], &o[1])
            } else {
                (&o[1], &o[0])
            };
            let (b, off) = match addr {
                Opd::Mem(b, off) => (b, *off),
                _ => return Err("expected an address".into()),
            };
            let Some(space) = space else {
                // ld.param [name+off]
                if base != "ld" || nvec != 1 {
                    return unsupported();
                }
                let Opd::Sym(pn) = b.as_ref() else {
                    return Err("expected a parameter name".into());
                };
                let prm = c
                    .params
                    .iter()
                    .find(|x| &x.name == pn)
                    .ok_or_else(|| format!("unknown parameter `{pn}`"))?;
                let po = prm.offset as i64 + off;
                if po < 0 || po + i64::from(bytes) > i64::from(prm.offset + prm.bytes) {
                    return Err(format!("reads outside parameter `{pn}`"));
                }
                return Ok(Op::LdParam {
                    d: c.dst(data)?,
                    off: po as u32,
                    bytes,
                });
            };
            let base_src = match b.as_ref() {
                Opd::Imm(v) => Src::Imm(*v),
                o => c.src(o, Ty::U(64))?,
            };
            if base == "ld" {
                let mut d = [0u32; 4];
                match nvec {
                    1 => d[0] = c.dst(data)?,
                    2 => d[..2].copy_from_slice(&c.dvec::<2>(data)?),
                    _ => d = c.dvec::<4>(data)?,
                }
                Ok(Op::Ld {
                    space,
                    bytes,
                    n: nvec,
                    d,
                    base: base_src,
                    off,
                    nc: has("nc"),
                })
            } else {
                let mut s = [Src::Imm(0); 4];
                match nvec {
                    1 => s[0] = c.src(data, t)?,
                    2 => s[..2].copy_from_slice(&c.vec::<2>(data, t)?),
                    _ => s = c.vec::<4>(data, t)?,
                }
                Ok(Op::St {
                    space,
                    bytes,
                    n: nvec,
                    s,
                    base: base_src,
                    off,
                })
            }
        }
        "bra" => {
            n(1)?;
            match &o[0] {
                Opd::Sym(l) => Ok(Op::Bra {
                    target: *c
                        .labels
                        .get(l)
                        .ok_or_else(|| format!("unknown label `{l}`"))?,
                }),
                _ => Err("expected a label".into()),
            }
        }
        "ret" | "exit" => {
            n(0)?;
            Ok(Op::Exit)
        }
        "bar" | "barrier" => {
            if !(has("sync") || (base == "bar" && mods.is_empty())) || has("red") || has("arrive") {
                return unsupported();
            }
            if o.len() != 1 {
                return Err("barriers with a thread count are not supported".into());
            }
            Ok(Op::Bar {
                id: c.src(&o[0], Ty::U(32))?,
            })
        }
        "shfl" => {
            if !has("sync") || ty != Some(Ty::B(32)) {
                return unsupported();
            }
            let mode = if has("bfly") {
                ShflMode::Bfly
            } else if has("up") {
                ShflMode::Up
            } else if has("down") {
                ShflMode::Down
            } else if has("idx") {
                ShflMode::Idx
            } else {
                return unsupported();
            };
            n(5)?;
            let (d, p) = match &o[0] {
                Opd::Pipe(a, b) => (c.dst(a)?, Some(c.dst(b)?)),
                x => (c.dst(x)?, None),
            };
            Ok(Op::Shfl {
                mode,
                d,
                p,
                a: c.src(&o[1], Ty::B(32))?,
                b: c.src(&o[2], Ty::B(32))?,
                c: c.src(&o[3], Ty::B(32))?,
                mask: c.src(&o[4], Ty::B(32))?,
            })
        }
        "mma" => {
            let shape_ok =
                has("m16n8k16") && has("row") && has("col") && has("aligned") && has("sync");
            let ts: Vec<Ty> = types.clone();
            let bf16 = match ts.as_slice() {
                [Ty::F32, Ty::Bf16, Ty::Bf16, Ty::F32] => true,
                [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => false,
                _ => return unsupported(),
            };
            if !shape_ok {
                return unsupported();
            }
            n(4)?;
            Ok(Op::Mma {
                bf16,
                d: c.dvec::<4>(&o[0])?,
                a: c.vec::<4>(&o[1], Ty::B(32))?,
                b: c.vec::<2>(&o[2], Ty::B(32))?,
                c: c.vec::<4>(&o[3], Ty::F32)?,
            })
        }
        "wgmma" => wgmma(r, c, mods, &types),
        "fence" => {
            if has("proxy") && has("async") {
                n(0)?;
                Ok(Op::FenceProxyAsync)
            } else {
                unsupported()
            }
        }
        _ => unsupported(),
    }
}

/// `mad.lo.cc.u32` and `madc.{lo,hi}{.cc}.u32`: the carry chain.
fn carry(r: &Raw, c: &Ctx, mods: &[&str]) -> Result<Op, String> {
    let has = |m: &str| mods.contains(&m);
    if !(has("u32") || has("s32")) {
        return Err("instruction not implemented by the emulator".into());
    }
    if r.opds.len() != 4 {
        return Err("expected 4 operands".into());
    }
    let t = Ty::U(32);
    Ok(Op::MadCc {
        hi: has("hi"),
        carry_in: r.opcode.starts_with("madc"),
        carry_out: has("cc"),
        d: c.dst(&r.opds[0])?,
        s: [
            c.src(&r.opds[1], t)?,
            c.src(&r.opds[2], t)?,
            c.src(&r.opds[3], t)?,
        ],
    })
}

fn check_cvt(cv: &Cvt) -> Result<(), String> {
    let (d, s) = (cv.dst, cv.src);
    let ok = match (d.is_float(), s.is_float()) {
        (false, false) => cv.rnd.is_none() && cv.irnd.is_none() && !cv.ftz,
        (true, false) => {
            // int -> float: f32 and f64 with an explicit rounding mode.
            (d == Ty::F32 && cv.rnd.is_some() || d == Ty::F64 && cv.rnd == Some(Rnd::Rn))
                && cv.irnd.is_none()
                && !cv.sat
        }
        (false, true) => cv.irnd.is_some() && cv.rnd.is_none() && matches!(s, Ty::F32 | Ty::F64),
        (true, true) => match (d, s) {
            (Ty::F32, Ty::F32) | (Ty::F64, Ty::F64) => cv.rnd.is_none(),
            (Ty::F16 | Ty::Bf16, Ty::F32) => cv.rnd == Some(Rnd::Rn) && cv.irnd.is_none(),
            (Ty::F32, Ty::F16 | Ty::Bf16) | (Ty::F64, Ty::F32) => {
                cv.rnd.is_none() && cv.irnd.is_none()
            }
            (Ty::F32, Ty::F64) => cv.rnd.is_some() && cv.irnd.is_none(),
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err("instruction not implemented by the emulator".into())
    }
}

fn wgmma(r: &Raw, c: &Ctx, mods: &[&str], types: &[Ty]) -> Result<Op, String> {
    let has = |m: &str| mods.contains(&m);
    let unsupported = || Err("instruction not implemented by the emulator".to_string());
    if has("fence") {
        return Ok(Op::WgFence);
    }
    if has("commit_group") {
        return Ok(Op::WgCommit);
    }
    if has("wait_group") {
        if r.opds.len() != 1 {
            return Err("expected 1 operand".into());
        }
        return match r.opds[0] {
            Opd::Imm(v) => Ok(Op::WgWait(v as u32)),
            _ => Err("expected an immediate".into()),
        };
    }
    if !has("mma_async") {
        return unsupported();
    }
    let shape = mods
        .iter()
        .find(|m| m.starts_with("m64n") && m.ends_with("k16"))
        .ok_or("only m64nNk16 shapes are supported")?;
    let n: u32 = shape[4..shape.len() - 3]
        .parse()
        .map_err(|_| "bad shape".to_string())?;
    if n == 0 || !n.is_multiple_of(8) || n > 256 {
        return Err(format!("bad N {n}"));
    }
    let bf16 = match types {
        [Ty::F32, Ty::Bf16, Ty::Bf16] => true,
        [Ty::F32, Ty::F16, Ty::F16] => false,
        _ => return unsupported(),
    };
    let o = &r.opds;
    let regs = (n / 2) as usize;
    let d: Vec<u32> = match &o.first() {
        Some(Opd::Vec(v)) if v.len() == regs => {
            v.iter().map(|x| c.dst(x)).collect::<Result<_, _>>()?
        }
        _ => return Err(format!("expected {regs} accumulator registers")),
    };
    let imm = |x: &Opd| -> Result<i64, String> {
        match x {
            Opd::Imm(v) => Ok(*v as i64),
            _ => Err("expected an immediate".into()),
        }
    };
    let (a, rest) = match o.get(1) {
        Some(v @ Opd::Vec(_)) => (WgA::Regs(c.vec::<4>(v, Ty::B(32))?), &o[2..]),
        Some(x) => (WgA::Desc(c.src(x, Ty::U(64))?), &o[2..]),
        None => return Err("missing operands".into()),
    };
    // desc-b, scale-d, imm-scale-a, imm-scale-b, [imm-trans-a,] imm-trans-b
    let want = if matches!(a, WgA::Desc(_)) { 6 } else { 5 };
    if rest.len() != want {
        return Err(format!("expected {} operands", want + 2));
    }
    let b = c.src(&rest[0], Ty::U(64))?;
    let scale_d = c.src(&rest[1], Ty::Pred)?;
    let sa = imm(&rest[2])?;
    let sb = imm(&rest[3])?;
    let trans: Vec<i64> = rest[4..].iter().map(imm).collect::<Result<_, _>>()?;
    if trans.iter().any(|t| *t != 0) {
        return Err("transposed (MN-major) operands are not supported".into());
    }
    let sign = |s: i64| match s {
        1 => Ok(false),
        -1 => Ok(true),
        _ => Err(format!("scale {s} is not 1 or -1")),
    };
    Ok(Op::Wgmma {
        n,
        bf16,
        d,
        a,
        b,
        scale_d,
        neg_a: sign(sa)?,
        neg_b: sign(sb)?,
    })
}
