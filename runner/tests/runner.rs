//! The slim runner as a user runs it: usage and bundle errors exit 1 with a
//! message, never a panic. (Running real bundles is tested in the root
//! suite, which can build them.)

use std::process::Command;

fn runner(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mixc-runner"))
        .args(args)
        .output()
        .expect("run mixc-runner");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn errors_are_messages_not_panics() {
    let (code, err) = runner(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("usage: mixc-runner BUNDLE_DIR"), "{err}");
    let (code, err) = runner(&["/nonexistent/bundle"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read /nonexistent/bundle/manifest.json"),
        "{err}"
    );
    let (code, err) = runner(&["x", "--reps", "many"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--reps: `many`"), "{err}");
    let (code, err) = runner(&["x", "--set", "L"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("NAME=VALUE"), "{err}");
    for (_, e) in [runner(&[]), runner(&["/nonexistent"])] {
        assert!(!e.contains("panicked"), "{e}");
    }
}
