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
