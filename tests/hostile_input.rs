//! Configuration values and arguments that used to panic or leak: each is now a clear error (exit
//! code 2) that names what is wrong and how to fix it, and never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn imagescope(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

fn servers(dir: &Path, endpoint: &str, extra: &str) {
    std::fs::write(
        dir.join("servers.toml"),
        format!(
            "[roles.reasoner]\nendpoints = [\"{endpoint}\"]\nmodel = \"m\"\napi = \"openai\"\nmax_in_flight = 1\n{extra}"
        ),
    )
    .unwrap();
}

#[test]
fn huge_or_tiny_durations_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        ("timeout_secs = 1e300\n", "timeout_secs"),
        ("requests_per_second = 1e-300\n", "requests_per_second"),
        ("requests_per_second = 1e300\n", "requests_per_second"),
    ] {
        servers(dir.path(), "http://127.0.0.1:9/v1", extra);
        let (code, text) = imagescope(dir.path(), &["doctor", "--config", "servers.toml"]);
        assert_eq!(code, 2, "{extra}: {text}");
        assert!(
            text.contains(key) && text.contains("servers.toml"),
            "{text}"
        );
    }
    servers(dir.path(), "http://127.0.0.1:9/v1", "");
    for t in ["1e300", "-1", "NaN", "0"] {
        let arg = format!("--timeout={t}");
        let (code, text) = imagescope(dir.path(), &["doctor", "--config", "servers.toml", &arg]);
        assert_eq!(code, 2, "{t}: {text}");
        assert!(text.contains("--timeout"), "{text}");
    }
}

#[test]
fn credentials_in_an_endpoint_url_are_refused_without_printing_them() {
    let dir = tempfile::tempdir().unwrap();
    servers(dir.path(), "http://alice:hunter2@127.0.0.1:9/v1", "");
    let (code, text) = imagescope(dir.path(), &["doctor", "--config", "servers.toml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("api_key_env"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("alice"),
        "{text}"
    );
}

#[test]
fn a_run_name_that_climbs_out_of_the_runs_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let err = imagescope::runs::folder::RunFolder::create(&runs, "cirr", "../../x")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("plain folder name"), "{err}");
    assert!(!dir.path().join("x").exists() && !runs.exists());
    for ok in ["tau-0.2", "baseline_v1"] {
        assert!(imagescope::runs::folder::RunFolder::create(&runs, "cirr", ok).is_ok());
    }
    for bad in ["", ".hidden", "a/b", "a b"] {
        assert!(
            imagescope::runs::folder::RunFolder::create(&runs, "cirr", bad).is_err(),
            "{bad:?}"
        );
    }
}
