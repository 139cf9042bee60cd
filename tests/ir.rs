//! The mixer IR: lowering, the text form's round trip, the verifier, and
//! op kinds derived from the math.

use crate::common::{check_ok, check_path, mix_files};
use mixc_compiler::ir::{self, lower::lower, text, verify::verify, Node, OpKind};

fn all_modules() -> Vec<(String, ir::Module)> {
    let mut out = Vec::new();
    for f in mix_files("examples").into_iter().chain(mix_files("std")) {
        let c = check_path(&f, &[]);
        for p in &c.programs {
            out.push((format!("{f}:{}", p.name), lower(p)));
        }
    }
    out
}

#[test]
fn every_mixer_lowers_to_verified_ir_whose_text_round_trips() {
    let mods = all_modules();
    assert!(mods.len() >= 16);
    for (name, m) in mods {
        verify(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let t1 = text::print(&m);
        let parsed = text::parse(&t1).unwrap_or_else(|e| panic!("{name}: {e}\n{t1}"));
        verify(&parsed).unwrap_or_else(|e| panic!("{name} (parsed): {e}"));
        let t2 = text::print(&parsed);
        assert_eq!(t1, t2, "{name}: print(parse(print(m))) differs");
    }
}

#[test]
fn attention_ir_is_pinned() {
    let c = check_path("std/attention.mix", &[]);
    let m = lower(c.program(None).unwrap());
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("std_attention", text::print(&m));
    });
}

#[test]
fn op_kinds_come_from_the_math() {
    let kinds = |f: &str| -> Vec<(String, OpKind)> {
        let c = check_path(f, &[]);
        let m = lower(c.program(None).unwrap());
        m.ops
            .iter()
            .map(|o| (m.value(o.result).name.clone(), o.kind))
            .collect()
    };
    let a = kinds("std/attention.mix");
    let get = |v: &[(String, OpKind)], n: &str| v.iter().find(|(x, _)| x == n).map(|x| x.1);
    assert_eq!(get(&a, "q"), Some(OpKind::Contract));
    assert_eq!(get(&a, "s"), Some(OpKind::Contract));
    assert_eq!(get(&a, "p"), Some(OpKind::Normalize));
    assert_eq!(get(&a, "y"), Some(OpKind::Contract));
    let h = kinds("std/hyena.mix");
    assert_eq!(
        get(&h, "s"),
        Some(OpKind::Conv),
        "short conv in raw index form"
    );
    assert_eq!(
        get(&h, "z"),
        Some(OpKind::Map),
        "the conv builtin is inlined into z's map"
    );
    let r = kinds("examples/retnet.mix");
    assert!(r.iter().any(|(_, k)| *k == OpKind::Scan), "{r:?}");
    // A conv written with the builtin alone is a conv op, like its raw form.
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    param k: [L, D] ~ normal(0, 1)\n    y = conv(x, k, over: l)\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let m = lower(c.program(None).unwrap());
    assert_eq!(m.ops[0].kind, OpKind::Conv);
    // A read at a constant offset is a shift.
    let src = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    y[b, l, d] = x[b, l - 1, d] where l >= 1\n    return y\n}\n";
    let c = check_ok("t.mix", src, &[]);
    let m = lower(c.program(None).unwrap());
    assert_eq!(m.ops[0].kind, OpKind::Shift);
    assert!(text::print(&m).contains("= shift y ["));
}

#[test]
fn the_verifier_rejects_broken_modules() {
    let c = check_path("std/attention.mix", &[]);
    let good = lower(c.program(None).unwrap());
    assert!(verify(&good).is_ok());

    // An op that reads a value defined after it.
    let mut m = good.clone();
    let first = m.ops[0].body;
    let late = m.ops.last().unwrap().result;
    if let Some(read) = find_read(&m, first) {
        if let Node::Read(v, _) = &mut m.exprs[read.0 as usize].node {
            *v = late;
        }
    }
    let e = verify(&m).unwrap_err().to_string();
    assert!(e.contains("compiler bug"), "{e}");

    // A wrong kind.
    let mut m = good.clone();
    m.ops[0].kind = OpKind::Scan;
    assert!(verify(&m).unwrap_err().to_string().contains("kind"));

    // An index out of scope.
    let mut m = good.clone();
    let body = m.ops[0].body;
    m.exprs[body.0 as usize].node = Node::Index(99);
    assert!(verify(&m).is_err());

    // Text that does not parse says where.
    let e = text::parse(
        "mixer m\n%0 = input x [B]\n%1 = map y [b@0:B] (frobnicate (read %0 b@0))\nreturn %1\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.message.contains("frobnicate"));
}

fn find_read(m: &ir::Module, e: ir::ExprId) -> Option<ir::ExprId> {
    if matches!(m.expr(e).node, Node::Read(..)) {
        return Some(e);
    }
    m.children(e).into_iter().find_map(|c| find_read(m, c))
}

#[test]
fn split_heavy_keeps_meaning_and_isolates_heavy_ops() {
    use mixc_compiler::Interpreter;
    use std::collections::BTreeMap;
    let sizes: BTreeMap<String, i64> = [("B", 2), ("L", 9), ("D", 32)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    for (name, m) in all_modules() {
        let s = ir::split::split_heavy(&m);
        verify(&s).unwrap_or_else(|e| panic!("{name}: {e}\n{}", text::print(&s)));
        // Every op now has at most one reduction or normaliser, at its root.
        for op in &s.ops {
            let mut heavy = 0;
            count_heavy(&s, op.body, true, &mut heavy);
            assert!(
                heavy == 0 || op.recurrence.is_some(),
                "{name}: op {} still has a nested heavy node",
                s.value(op.result).name
            );
        }
        let run = |m: ir::Module| {
            let mut it = Interpreter::for_module(m, &sizes).unwrap();
            it.init(3).unwrap();
            it.run().unwrap();
            it.output().clone()
        };
        let (a, b) = (run(m.clone()), run(s));
        let err = mixc_runtime::rel_err(&b.data, &a.data);
        assert!(err < 1e-12, "{name}: split changed the output by {err:e}");
    }
}

/// Counts reductions and normalisers that are not at the root of a body.
fn count_heavy(m: &ir::Module, e: ir::ExprId, root: bool, n: &mut usize) {
    let heavy = matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. });
    if heavy && !root {
        *n += 1;
        return;
    }
    for c in m.children(e) {
        count_heavy(m, c, heavy && root, n);
    }
}
