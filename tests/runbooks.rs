//! `detector runbooks validate`: the shipped runbooks pass without their
//! secrets (as in a CI pipeline), and with them under `--secrets`; a
//! missing secret under `--secrets`, a malformed reference, a rule the
//! mitigation layer would refuse, or a file past the limits fails it, with
//! the file, line and column.

use std::process::Command;

fn validate(dir: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    run(&["runbooks", "validate", "--secrets", dir], env)
}

fn validate_without_secrets(dir: &str) -> (bool, String, String) {
    run(&["runbooks", "validate", dir], &[])
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_detector"));
    cmd.args(args);
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

const SHIPPED_NAMES: [&str; 6] = [
    "udp-flood-auto-response",
    "syn-flood-auto-response",
    "reflection-auto-response",
    "flood-signature-response",
    "notify-every-attack",
    "pagerduty-critical",
];

#[test]
fn the_shipped_runbooks_validate_with_their_secrets_set() {
    let (ok, out, err) = validate(SHIPPED, SECRETS);
    assert!(ok, "{out}{err}");
    for name in SHIPPED_NAMES {
        assert!(out.contains(&format!("ok   {name} ")), "{out}");
    }
    assert!(!out.contains("XYZ") && !out.contains("s3cret") && !err.contains("s3cret"), "secrets stay hidden");
}

/// The upstream rungs, apart (their `bgp` steps need a `bgp:` section).
#[test]
fn the_shipped_upstream_runbooks_validate() {
    let (ok, out, err) = validate_without_secrets(concat!(env!("CARGO_MANIFEST_DIR"), "/../runbooks/upstream"));
    assert!(ok, "{out}{err}");
    for name in ["upstream-flowspec", "upstream-rtbh"] {
        assert!(out.contains(&format!("ok   {name} ")), "{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
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

#[test]
fn the_shipped_runbooks_validate_without_their_secrets() {
    let (ok, out, err) = validate_without_secrets(SHIPPED);
    assert!(ok, "{out}{err}");
    for name in SHIPPED_NAMES {
        assert!(out.contains(&format!("ok   {name} ")), "{out}");
    }
    assert!(out.contains("pass --secrets"), "{out}");
}

/// A scratch directory of runbook files, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str, files: &[(&str, &str)]) -> Dir {
        let dir = std::env::temp_dir().join(format!("detector-validate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Dir(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HEAD: &str = "name: x\ntrigger: { families: [any] }\nsteps:\n";

#[test]
fn without_secrets_references_and_everything_else_are_still_checked() {
    let bad = [
        (
            "ref.yaml",
            "  - webhook: { url: \"https://hooks.example.test/\", secret: \"${bad-name}\" }\n",
            "not an environment variable name",
        ),
        ("open.yaml", "  - notify: { channel: slack, url: \"${SLACK_WEBHOOK_URL\" }\n", "without a closing"),
        ("scheme.yaml", "  - webhook: { url: \"ftp://x.test/${TOKEN}\" }\n", "only http:// and https://"),
        ("tpl.yaml", "  - note: \"{{ nodes }}\"\n", "template uses 'nodes'"),
        (
            "burst.yaml",
            "  - mitigate: { action: rate_limit, scope: top_sources, pps: 50, burst: 0, ttl: 1m }\n",
            "burst 0 is out of range",
        ),
        (
            "pps.yaml",
            "  - mitigate: { action: rate_limit, scope: top_sources, pps: 0, ttl: 1m }\n",
            "rate 0 packets per second is out of range",
        ),
        (
            "bps.yaml",
            "  - mitigate: { action: rate_limit, scope: top_sources, pps: 5, bps: 10, ttl: 1m }\n",
            "byte rate 10",
        ),
        (
            "ttl.yaml",
            "  - mitigate: { action: drop, scope: top_sources, ttl: 500ms }\n",
            "ttl must be between 1s and 365 days",
        ),
        (
            "class.yaml",
            "  - mitigate: { action: drop, scope: top_sources, class: udpp, ttl: 1m }\n",
            "unknown traffic class 'udpp'",
        ),
        (
            "port.yaml",
            "  - mitigate: { action: drop, scope: top_sources, port: 0, ttl: 1m }\n",
            "port 0 cannot be matched",
        ),
        (
            "drop.yaml",
            "  - mitigate: { action: drop, scope: top_sources, burst: 5, ttl: 1m }\n",
            "only apply to a rate_limit rule",
        ),
    ];
    for (file, step, expect) in bad {
        let d = Dir::new(file.trim_end_matches(".yaml"), &[(file, &format!("{HEAD}{step}"))]);
        let (ok, out, _) = validate_without_secrets(d.path());
        assert!(!ok, "{file}: {out}");
        assert!(out.contains(&format!("{file}:4:")) && out.contains(expect), "{file}: {out}");
    }
    // A missing secret passes without --secrets, and fails with it.
    let d = Dir::new(
        "missing",
        &[("m.yaml", &format!("{HEAD}  - notify: {{ channel: slack, url: \"${{NOT_SET_HERE}}\" }}\n"))],
    );
    assert!(validate_without_secrets(d.path()).0);
    let (ok, out, _) = validate(d.path(), &[]);
    assert!(!ok && out.contains("m.yaml:4:") && out.contains("environment variable NOT_SET_HERE is not set"), "{out}");
}

#[test]
fn files_past_the_limits_are_refused_with_their_place() {
    let deep: String = (0..40).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    let many: String = (0..150).map(|_| "  - note: hi\n").collect();
    let d = Dir::new(
        "limits",
        &[
            ("brackets.yaml", &format!("{HEAD}  - note: {}\n", "[".repeat(50_000))),
            (
                "deep.yaml",
                &format!("name: x\ntrigger: {{ families: [any] }}\nsteps: [ {{ note: hi }} ]\nextra:\n{deep}"),
            ),
            ("huge.yaml", &format!("{HEAD}{}", "  - note: hi\n".repeat(200_000))),
            ("steps.yaml", &format!("{HEAD}{many}")),
        ],
    );
    let (ok, out, _) = validate_without_secrets(d.path());
    assert!(!ok);
    assert!(out.contains("brackets.yaml:4:") && out.contains("nested deeper than"), "{out}");
    assert!(out.contains("deep.yaml:") && out.contains("nested deeper than"), "{out}");
    assert!(out.contains("huge.yaml:") && out.contains("larger than"), "{out}");
    assert!(out.contains("steps.yaml:4:") && out.contains("at most 100 steps"), "{out}");
}
