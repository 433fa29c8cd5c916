//! `detector runbooks validate`: the shipped runbooks pass with their
//! secrets in the environment; a missing secret or a bad file fails it,
//! with the file, line and column.

use std::process::Command;

fn validate(dir: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_detector"));
    cmd.args(["runbooks", "validate", dir]);
    for var in ["SLACK_WEBHOOK_URL", "DETECTOR_WEBHOOK_URL", "DETECTOR_WEBHOOK_SECRET", "PAGERDUTY_ROUTING_KEY"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../runbooks");

const SECRETS: &[(&str, &str)] = &[
    ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/XYZ"),
    ("DETECTOR_WEBHOOK_URL", "https://hooks.example.test/ddos"),
    ("DETECTOR_WEBHOOK_SECRET", "s3cret"),
    ("PAGERDUTY_ROUTING_KEY", "R0UT1NG"),
];

#[test]
fn the_shipped_runbooks_validate_with_their_secrets_set() {
    let (ok, out, err) = validate(SHIPPED, SECRETS);
    assert!(ok, "{out}{err}");
    for name in ["udp-flood-auto-response", "syn-flood-auto-response", "notify-every-attack", "pagerduty-critical"] {
        assert!(out.contains(&format!("ok   {name} ")), "{out}");
    }
    assert!(!out.contains("XYZ") && !out.contains("s3cret") && !err.contains("s3cret"), "secrets stay hidden");
}

#[test]
fn a_missing_secret_or_a_bad_file_fails_with_its_place() {
    let (ok, out, err) = validate(SHIPPED, &SECRETS[1..]);
    assert!(!ok);
    assert!(out.contains("FAIL ") && out.contains("environment variable SLACK_WEBHOOK_URL is not set"), "{out}");
    assert!(err.contains("runbook files in") && err.contains("were refused"), "{err}");

    let dir = std::env::temp_dir().join(format!("detector-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.yaml"), "name: bad\ntrigger: { families: [udp_flod] }\nsteps: [ { note: hi } ]\n")
        .unwrap();
    let (ok, out, _) = validate(dir.to_str().unwrap(), &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(out.contains("bad.yaml:2:") && out.contains("unknown family 'udp_flod'"), "{out}");

    let (ok, _, err) = validate("/nonexistent-runbooks", &[]);
    assert!(!ok && err.contains("cannot read the runbook directory"), "{err}");
}
