//! Config loading and validation: every documented error has a clear message, the shipped
//! example configs validate, and `olla --validate-config` exits accordingly.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validate(yaml: &str) -> Result<olla::config::Runtime, String> {
    let cfg = olla::config::parse(yaml, &|_| None)?;
    olla::config::resolve(&cfg).map_err(|e| e.join("\n"))
}

#[test]
fn shipped_configs_validate() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cfg = olla::config::load_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            olla::config::resolve(&cfg).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example configs");
}

#[test]
fn each_validation_error_has_its_message() {
    let ep = |line: &str| format!("discovery:\n  static:\n    endpoints:\n{line}");
    let cases: &[(String, &str)] = &[
        (ep("      - {name: a, url: 'http://h:1', type: ollama}\n      - {name: a, url: 'http://h:2', type: ollama}\n"), "duplicate endpoint name \"a\""),
        (ep("      - {name: a, url: 'not a url', type: ollama}\n"), "endpoints[0] (a).url: invalid URL"),
        (ep("      - {name: a, url: 'h:1', type: ollama}\n"), "missing http:// or https://"),
        (ep("      - {name: a, url: 'http://h', type: ollama, check_interval: 5}\n"), "missing unit"),
        (ep("      - {name: a, url: 'http://h', type: ollama, check_interval: 5parsecs}\n"), "unknown unit"),
        (ep("      - {name: a, url: 'http://h', type: ollamma}\n"), "did you mean \"ollama\""),
        (ep("      - {name: a, url: 'http://h', type: ollama, priorty: 1}\n"), "did you mean `priority`"),
        ("proxy:\n  load_balancer: least-connection\n".into(), "did you mean \"least-connections\""),
        ("server:\n  request_limits: {max_bodysize: 1}\n".into(), "unknown key `max_bodysize` in `server.request_limits`"),
        ("server:\n  port: ${OLLA_TEST_UNSET_VAR}\n".into(), "OLLA_TEST_UNSET_VAR is not set"),
    ];
    for (yaml, want) in cases {
        let err = validate(yaml).expect_err(yaml);
        assert!(
            err.contains(want),
            "for\n{yaml}\nwanted {want:?} in:\n{err}"
        );
    }
}

#[test]
fn validate_config_flag_exits_zero_or_nonzero() {
    let bin = env!("CARGO_BIN_EXE_olla");
    let ok = Command::new(bin)
        .args(["--validate-config", "-c"])
        .arg(root().join("config/config.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("config OK"));

    let dir = std::env::temp_dir().join(format!("olla-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "server:\n  prot: 1\ndiscovery:\n  static:\n    endpoints:\n      - {name: a, url: 'ftp://x', type: ollama}\n").unwrap();
    let out = Command::new(bin)
        .arg("--validate-config")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `prot` in `server`") && err.contains("did you mean `port`"),
        "{err}"
    );

    let missing = Command::new(bin)
        .arg("--validate-config")
        .arg("-c")
        .arg(dir.join("nope.yaml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_file_lookup_uses_olla_config_file() {
    // Only this test sets the variable; the lookup reads it at call time.
    let dir = std::env::temp_dir().join(format!("olla-lookup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.yaml");
    std::fs::write(&file, "server: {port: 41234}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_olla"))
        .arg("--validate-config")
        .env("OLLA_CONFIG_FILE", &file)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("c.yaml"));
    std::fs::remove_dir_all(&dir).ok();
}
