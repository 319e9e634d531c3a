//! Tests that measure the whole process — the live heap, the process-wide metrics
//! recorder — cannot share it with the other tests of this binary, which run at the same
//! time. Such a test starts with [`alone!`](crate::alone): run by the harness, it runs
//! this binary again for itself only (`--exact NAME --test-threads=1`) and passes when that
//! run passed; in that run, where [`ALONE`] names it, it goes on with its body.

use std::process::Stdio;

/// Set for the run of this binary that runs one test by itself: the test's name.
pub const ALONE: &str = "OPTIN_IT_ALONE";

/// Whether this process is the one to run `test` (`module::function`) by itself. If not,
/// runs it so in a child process, checks that exactly that one test ran and passed, and
/// returns false: the caller then returns without running its body.
pub async fn here(test: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|name| name == test) {
        return true;
    }
    let out = tokio::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the harness when this test fails (or with --nocapture).
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test}, run alone, did not pass ({})",
        out.status
    );
    false
}

/// Runs the rest of the calling test alone in a process of its own (see [`here`]): the
/// test's function name is the argument, its module is taken from where it is called.
#[macro_export]
macro_rules! alone {
    ($test:literal) => {
        if !$crate::support::alone::here(
            concat!(module_path!(), "::", $test)
                .split_once("::")
                .expect("a module path")
                .1,
        )
        .await
        {
            return;
        }
    };
}
