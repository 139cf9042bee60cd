//! Generators of hostile input for the robustness tests and the fuzz
//! example: random streams of the language's own tokens (which reach deep
//! into the grammar and the checker) and random edits of real files.

const VOCAB: &[&str] = &[
    "mixer",
    "filter",
    "fn",
    "mask",
    "use",
    "std",
    ".",
    "masks",
    "config",
    "dim",
    "param",
    "return",
    "where",
    "and",
    "or",
    "not",
    "true",
    "false",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "->",
    "~",
    "=",
    "+",
    "-",
    "*",
    "**",
    "/",
    "//",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "\n",
    "\n",
    "\n",
    "x",
    "y",
    "b",
    "l",
    "d",
    "i",
    "j",
    "t",
    "h",
    "B",
    "L",
    "D",
    "H",
    "E",
    "sum",
    "max",
    "mean",
    "softmax",
    "conv",
    "over",
    "exp",
    "select",
    "causal",
    "normal",
    "0",
    "1",
    "2",
    "0.5",
    "-1",
    "1e9",
    "9223372036854775807",
    "#c\n",
    "?",
    "@",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `len` random tokens of the language, space-separated.
pub fn token_soup(seed: u64, len: usize) -> String {
    let mut r = Rng(seed);
    let mut s = String::new();
    for _ in 0..len {
        s.push_str(VOCAB[r.below(VOCAB.len())]);
        s.push(' ');
    }
    s
}

/// `text` with `edits` random deletions, duplications and token insertions.
pub fn mutate(text: &str, seed: u64, edits: usize) -> String {
    let mut r = Rng(seed);
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..edits {
        let at = r.below(chars.len() + 1);
        match r.below(3) {
            0 if !chars.is_empty() => {
                let n = 1 + r.below(8);
                let end = (at + n).min(chars.len());
                chars.drain(at.min(chars.len())..end);
            }
            1 if !chars.is_empty() => {
                let from = r.below(chars.len());
                let n = 1 + r.below(12);
                let piece: Vec<char> = chars[from..(from + n).min(chars.len())].to_vec();
                let at = at.min(chars.len());
                chars.splice(at..at, piece);
            }
            _ => {
                let tok: Vec<char> = VOCAB[r.below(VOCAB.len())].chars().collect();
                let at = at.min(chars.len());
                chars.splice(at..at, tok);
            }
        }
    }
    chars.into_iter().collect()
}

/// A tiny deterministic generator for `random_program`.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn coin(&mut self) -> bool {
        self.next().is_multiple_of(2)
    }
    /// A fresh index name.
    fn idx(&mut self, used: &mut Vec<String>) -> String {
        loop {
            let n = format!(
                "{}{}",
                self.pick(&["i", "j", "t", "u", "n", "m", "a", "c"]),
                self.next() % 7
            );
            if !used.contains(&n) {
                used.push(n.clone());
                return n;
            }
        }
    }
}

/// A random, valid mixer over `x: [B, L, D]` returning `[B, L, D]`, from
/// the building blocks of the literature with random index names, operand
/// orders, masks, score modifications, gates and mixing stages. Used by the
/// optimiser's soundness property and the back ends' differential tests.
pub fn random_program(seed: u64) -> String {
    let mut g = Gen(seed.wrapping_add(0x9e37));
    let mut used = Vec::new();
    let (b, i, j, d, h, e, f) = (
        g.idx(&mut used),
        g.idx(&mut used),
        g.idx(&mut used),
        g.idx(&mut used),
        g.idx(&mut used),
        g.idx(&mut used),
        g.idx(&mut used),
    );
    let mut s = String::from("use std.masks\n");
    let phi = g.coin();
    if phi {
        s.push_str("fn feat(z) = select(z > 0, z + 1, exp(z))\n");
    }
    s.push_str("mixer rnd(x: [B, L, D]) -> [B, L, D] {\n");
    let heads = g.pick(&["1", "2", "4"]);
    s.push_str(&format!(
        "    config H = {heads}, w = {}\n",
        g.pick(&["3", "5", "8"])
    ));
    s.push_str("    dim E = D / H\n");
    for p in ["wq", "wk", "wv"] {
        s.push_str(&format!(
            "    param {p}: [D, H, E] ~ normal(0, D ** -0.5)\n"
        ));
    }
    s.push_str("    param wo: [H, E, D] ~ normal(0, D ** -0.5)\n    param gate: [D] ~ normal(0, 1)\n    param filt: [L, D] ~ normal(0, 0.2)\n    param short: [3, D] ~ normal(0, 0.5)\n    param decay: [D] ~ uniform(0.5, 0.95)\n");
    // Projections, with operands in random order.
    let proj = |g: &mut Gen, name: &str, w: &str, pos: &str| {
        let (a, c) = (format!("x[{b}, {pos}, {d}]"), format!("{w}[{d}, {h}, {e}]"));
        let body = if g.coin() {
            format!("{a} * {c}")
        } else {
            format!("{c} * {a}")
        };
        let inner = format!("sum({d}) {body}");
        if phi && name != "v" {
            format!("    {name}[{b}, {pos}, {h}, {e}] = feat({inner})\n")
        } else {
            format!("    {name}[{b}, {pos}, {h}, {e}] = {inner}\n")
        }
    };
    s.push_str(&proj(&mut g, "q", "wq", &i));
    s.push_str(&proj(&mut g, "k", "wk", &j));
    s.push_str(&proj(&mut g, "v", "wv", &j));
    let mask = g.pick(&["", "causal", "window", "dilated", "blocks"]);
    let where_ = |m: &str| match m {
        "causal" => format!(" where causal({i}, {j})"),
        "window" => format!(" where window({i}, {j}, w)"),
        "dilated" => format!(" where dilated({i}, {j}, 4, 2)"),
        "blocks" => format!(" where blocks({i}, {j}, 4)"),
        _ => String::new(),
    };
    let qk = if g.coin() {
        format!("q[{b}, {i}, {h}, {e}] * k[{b}, {j}, {h}, {e}]")
    } else {
        format!("k[{b}, {j}, {h}, {e}] * q[{b}, {i}, {h}, {e}]")
    };
    if g.coin() {
        // Softmax attention, optionally with a position bias.
        let bias = if g.coin() {
            format!(" - 0.1 * ({i} - {j})")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "    sc[{b}, {h}, {i}, {j}] = sum({e}) {qk} * E ** -0.5{bias}\n"
        ));
        s.push_str(&format!(
            "    pr = softmax(sc, over: {j}){}\n",
            where_(mask)
        ));
        s.push_str(&format!(
            "    o[{b}, {i}, {h}, {e}] = sum({j}) pr[{b}, {h}, {i}, {j}] * v[{b}, {j}, {h}, {e}]\n"
        ));
    } else {
        // Causal linear attention, normalised.
        s.push_str(&format!("    a[{b}, {h}, {i}, {j}] = sum({e}) {qk}\n"));
        s.push_str(&format!("    num[{b}, {i}, {h}, {e}] = sum({j}) a[{b}, {h}, {i}, {j}] * v[{b}, {j}, {h}, {e}] where {j} <= {i}\n"));
        if phi {
            s.push_str(&format!(
                "    den[{b}, {i}, {h}] = sum({j}) a[{b}, {h}, {i}, {j}] where {j} <= {i}\n"
            ));
            s.push_str(&format!(
                "    o[{b}, {i}, {h}, {e}] = num[{b}, {i}, {h}, {e}] / den[{b}, {i}, {h}]\n"
            ));
        } else {
            s.push_str(&format!(
                "    o[{b}, {i}, {h}, {e}] = num[{b}, {i}, {h}, {e}] * 0.1\n"
            ));
        }
    }
    s.push_str(&format!(
        "    y0[{b}, {i}, {f}] = sum({h}, {e}) o[{b}, {i}, {h}, {e}] * wo[{h}, {e}, {f}]\n"
    ));
    // A mixing stage after attention: a long or short convolution with a
    // gate, or a gated recurrence, or nothing.
    match g.pick(&["long", "short", "scan", "none"]) {
        "long" => s.push_str(&format!("    z[{b}, {i}, {f}] = conv(y0, filt, over: {i})[{b}, {i}, {f}] * sigmoid(gate[{f}])\n")),
        "short" => s.push_str(&format!("    z[{b}, {i}, {f}] = sum(tap) short[tap, {f}] * y0[{b}, {i} - tap, {f}] where tap <= {i}\n")),
        "scan" => s.push_str(&format!("    z[{b}, {i}, {f}] = decay[{f}] * z[{b}, {i} - 1, {f}] + y0[{b}, {i}, {f}]\n")),
        _ => s.push_str(&format!("    z[{b}, {i}, {f}] = y0[{b}, {i}, {f}]\n")),
    }
    let tail = g.pick(&["plain", "gate", "skip"]);
    match tail {
        "gate" => s.push_str(&format!(
            "    out[{b}, {i}, {f}] = z[{b}, {i}, {f}] * silu(x[{b}, {i}, {f}])\n"
        )),
        "skip" => s.push_str(&format!(
            "    out[{b}, {i}, {f}] = z[{b}, {i}, {f}] + x[{b}, {i}, {f}] * gate[{f}]\n"
        )),
        _ => s.push_str(&format!("    out[{b}, {i}, {f}] = z[{b}, {i}, {f}]\n")),
    }
    s.push_str("    return out\n}\n");
    s
}
