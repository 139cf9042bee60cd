//! Diagnostics for a corpus of bad programs (tests/bad), snapshotted
//! verbatim: each must be an error with `file:line:col`, the source line and
//! a caret, and the corpus must cover at least 30 distinct errors.

use crate::common::{mix_files, root};
use mixc_dsl::{check_file, render, CheckOptions};
use std::collections::BTreeSet;

#[test]
fn bad_programs_get_pinned_rustc_style_diagnostics() {
    let files = mix_files("tests/bad");
    assert!(files.len() >= 30, "only {} bad programs", files.len());
    let mut first_messages = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        let c = check_file(f, &text, &CheckOptions::default());
        assert!(c.has_errors(), "{f}: no error reported");
        assert!(c.programs.is_empty() || c.diagnostics.iter().any(|d| d.is_error()));
        let rendered = render(&c.sources, &c.diagnostics);
        // file:line:col of the first error, a source line, a caret.
        let first = c.diagnostics.iter().find(|d| d.is_error()).unwrap();
        let (line, col) = c.sources.line_col(first.span);
        let file = &c.sources.get(first.span.file).name;
        assert!(
            rendered.contains(&format!("{file}:{line}:{col}")),
            "{f}: no location in\n{rendered}"
        );
        assert!(rendered.contains('^'), "{f}: no caret in\n{rendered}");
        assert!(
            rendered.contains(" │ "),
            "{f}: no source line in\n{rendered}"
        );
        first_messages.insert(first.message.clone());
        let stem = f
            .trim_start_matches("tests/bad/")
            .trim_end_matches(".mix")
            .to_string();
        insta::with_settings!({ snapshot_path => "snapshots/bad", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(stem, rendered);
        });
    }
    assert!(
        first_messages.len() >= 30,
        "only {} distinct first errors",
        first_messages.len()
    );
}

#[test]
fn several_errors_are_reported_in_one_run() {
    let text =
        std::fs::read_to_string(root().join("tests/bad/03_several_syntax_errors.mix")).unwrap();
    let c = check_file("t.mix", &text, &CheckOptions::default());
    let n = c.diagnostics.iter().filter(|d| d.is_error()).count();
    assert!(n >= 2, "error recovery reported only {n} error(s)");
    // Two independent semantic errors in different statements: both reported.
    let text = "mixer m(x: [B, L, D]) -> [B, L, D] {\n    a[b, l, d] = foo(x[b, l, d])\n    c[b, l, d] = x[b, l - 1, d]\n    return a\n}\n";
    let c = check_file("t.mix", text, &CheckOptions::default());
    let msgs: Vec<&str> = c.diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("unknown function `foo`")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("out of range")), "{msgs:?}");
}

#[test]
fn good_files_have_no_diagnostics() {
    for f in mix_files("std").into_iter().chain(mix_files("examples")) {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        let c = check_file(&f, &text, &CheckOptions::default());
        assert!(
            c.diagnostics.is_empty(),
            "{f}:\n{}",
            render(&c.sources, &c.diagnostics)
        );
    }
}
