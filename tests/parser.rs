//! Parser output: precedence and attachment pinned by small data-driven
//! cases, and whole files snapshotted as S-expressions.

use crate::common::{mix_files, root};
use mixc_dsl::parse::{parse_expr, parse_file};
use mixc_dsl::pretty;

fn check(src: &str, want: &str) {
    let e = parse_expr(src, 0).unwrap_or_else(|d| panic!("{src}: {d:?}"));
    assert_eq!(pretty::expr(&e), want, "parsing `{src}`");
}

#[test]
fn precedence_and_reduction_bodies() {
    check("a + b * c", "(+ a (* b c))");
    check("-a ** 2", "(neg (** a 2))");
    check("E ** -0.5", "(** E (neg 0.5))");
    check(
        "sum(f) z[l, f] * w[f, o] + b[o]",
        "(+ (sum (f) (* z[l f] w[f o])) b[o])",
    );
    check("a * sum(j) p * v", "(* a (sum (j) (* p v)))");
    check(
        "sum(h, e) o[h, e] * w[h, e]",
        "(sum (h e) (* o[h e] w[h e]))",
    );
    check("sum(t: L) h[t]", "(sum (t:L) h[t])");
    check(
        "sum(i) sum(j) a[i, j] * 2",
        "(sum (i) (sum (j) (* a[i j] 2)))",
    );
    check(
        "i // s == j // s and (i - j) % r == 0",
        "(and (== (// i s) (// j s)) (== (% (- i j) r) 0))",
    );
    check("not a < b or c", "(or (not (< a b)) c)");
    check("softmax(s, over: j)", "(softmax s over:j)");
    check("conv(g, h, over: l)[b, l, d]", "(conv g h over:l)[b l d]");
    check(
        "(sum(j) x[j] where j <= i) + 1",
        "(+ (where (sum (j) x[j]) (<= j i)) 1)",
    );
    check("max(a, b) - c", "(- (max a b) c)");
    check("max(j) x[j] - c", "(- (max (j) x[j]) c)");
}

#[test]
fn newlines_end_statements_but_join_inside_brackets() {
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    y[b, l, d] = sum(k) (x[b, l, k]\n        * 2) +\n        1\n    p = softmax(s, over: j)\n        where causal(i, j)\n    return y\n}\n";
    let (f, d) = parse_file(src, 0);
    assert!(d.is_empty(), "{d:?}");
    let text = pretty::file(&f);
    assert!(
        text.contains("(= y[b l d] (+ (sum (k) (* x[b l k] 2)) 1))"),
        "{text}"
    );
    assert!(
        text.contains("(= p (where (softmax s over:j) (causal i j)))"),
        "{text}"
    );
}

#[test]
fn std_and_example_files_parse_to_pinned_trees() {
    for f in mix_files("std").into_iter().chain(mix_files("examples")) {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        let (tree, diags) = parse_file(&text, 0);
        assert!(diags.is_empty(), "{f}: {diags:?}");
        let stem = f.replace('/', "__").trim_end_matches(".mix").to_string();
        insta::with_settings!({ snapshot_path => "snapshots/parse", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(stem, pretty::file(&tree));
        });
    }
}
