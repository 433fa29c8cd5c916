//! Rules built from an incident's signature (see
//! [`crate::detect::signature`]): what a runbook's `scope: signature` and
//! `scope: vectors` steps install. Pure: a signature and the step's shape
//! in, the rules (or the reason there are none) out.

use thiserror::Error;

use super::{
    prefix::Prefix,
    rule::{class_mask, Match, Shape},
};
use crate::{detect::signature::Signature, span::Span};

/// Default `max_collateral`: a derived rule that would also have matched
/// more than this share of the interface's peacetime traffic is not
/// installed.
pub const DEFAULT_MAX_COLLATERAL: f64 = 0.01;
/// Fewer peacetime samples than this and the collateral is not known.
pub const MIN_PEACETIME_SAMPLES: usize = 20;
/// Most rules one signature becomes (its port spans combined).
pub const MAX_DERIVED_RULES: usize = 4;

#[derive(Debug, Error, PartialEq)]
pub enum DeriveError {
    #[error(
        "the signature ({sig}) would also match {:.2}% of the interface's peacetime traffic, above max_collateral {:.2}%",
        collateral * 100.0,
        max * 100.0
    )]
    Collateral { sig: String, collateral: f64, max: f64 },
    #[error("the signature's collateral cannot be estimated: {0} peacetime samples (at least {MIN_PEACETIME_SAMPLES} are needed)")]
    NoPeacetime(usize),
    #[error("the signature ({0}) needs {1} rules, its port spans combined; at most {MAX_DERIVED_RULES}")]
    TooMany(String, usize),
    #[error("the signature's classes ({sig}) and the step's ({step}) have none in common")]
    NoClasses { sig: String, step: String },
    #[error("the attack has no destination port to protect with SYN cookies ({0}); give port in the step")]
    NoPorts(String),
}

/// The SYN-cookie rules for a SYN flood: one per destination port span,
/// the step's own `port` if it gives one, else the signature's; on every
/// source (the attacked address's family when the signature names one).
/// No collateral limit: cookies drop no legitimate handshake.
pub fn syn_cookie_rules(sig: Option<&Signature>, step: &Shape) -> Result<Vec<(Prefix, Shape)>, DeriveError> {
    let ports: Vec<Span<u16>> = match (step.m.dport, sig) {
        (Some(p), _) => vec![p],
        (None, Some(s)) if !s.dst_ports.is_empty() => s.dst_ports.clone(),
        (None, s) => {
            return Err(DeriveError::NoPorts(s.map(|s| s.to_string()).unwrap_or_else(|| "no signature yet".into())))
        }
    };
    if ports.len() > MAX_DERIVED_RULES {
        return Err(DeriveError::TooMany(sig.map(|s| s.to_string()).unwrap_or_default(), ports.len()));
    }
    let dst = sig.and_then(|s| s.dst);
    let source: Prefix = match dst {
        Some(std::net::IpAddr::V4(_)) => "0.0.0.0/0",
        _ => "::/0",
    }
    .parse()
    .expect("a prefix");
    Ok(ports
        .into_iter()
        .map(|p| {
            let m = Match { dport: Some(p), dst: dst.map(Prefix::host), ..Default::default() };
            (source, Shape { m, ..step.clone() })
        })
        .collect())
}

/// The rules for `sig` with the step's action, rates, TTL and reason
/// (`step`; its match fields are not used: the signature is the match),
/// refused above `max_collateral`. The source is any address of the
/// attacked address's family (`::/0`, both families, without one): the
/// sources of a spoofed flood are random. Such rules spare known-good peers.
pub fn rules_from(sig: &Signature, step: &Shape, max_collateral: f64) -> Result<Vec<(Prefix, Shape)>, DeriveError> {
    if sig.peacetime_samples < MIN_PEACETIME_SAMPLES {
        return Err(DeriveError::NoPeacetime(sig.peacetime_samples));
    }
    if sig.collateral > max_collateral {
        return Err(DeriveError::Collateral { sig: sig.to_string(), collateral: sig.collateral, max: max_collateral });
    }
    let mut classes = sig.classes.clone();
    if !step.classes.is_empty() {
        let allowed = class_mask(&step.classes).unwrap_or(0);
        classes.retain(|c| class_mask(std::slice::from_ref(c)).is_ok_and(|m| m & allowed != 0));
        if classes.is_empty() {
            return Err(DeriveError::NoClasses { sig: sig.classes.join(","), step: step.classes.join(",") });
        }
    }
    let one_or_any = |spans: &[Span<u16>]| -> Vec<Option<Span<u16>>> {
        if spans.is_empty() {
            vec![None]
        } else {
            spans.iter().copied().map(Some).collect()
        }
    };
    let (sports, dports) = (one_or_any(&sig.src_ports), one_or_any(&sig.dst_ports));
    let n = sports.len() * dports.len();
    if n > MAX_DERIVED_RULES {
        return Err(DeriveError::TooMany(sig.to_string(), n));
    }
    let source = match sig.dst {
        Some(std::net::IpAddr::V4(_)) => "0.0.0.0/0",
        _ => "::/0",
    };
    let source: Prefix = source.parse().expect("a prefix");
    let mut out = Vec::with_capacity(n);
    for sport in &sports {
        for dport in &dports {
            let m = Match {
                sport: *sport,
                dport: *dport,
                dst: sig.dst.map(Prefix::host),
                length: sig.length,
                ip_ttl: sig.ttl,
            };
            out.push((source, Shape { classes: classes.clone(), m, ..step.clone() }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitigate::rule::{Action, ShapeRequest};

    fn sig() -> Signature {
        Signature {
            classes: vec!["udp".into()],
            dst: Some("192.0.2.2".parse().unwrap()),
            dst_ports: vec![Span::one(27015)],
            src_ports: vec![],
            length: Some(Span { lo: 140, hi: 144 }),
            ttl: Some(Span { lo: 64, hi: 64 }),
            coverage: 0.999,
            collateral: 0.0,
            samples: 4096,
            peacetime_samples: 1000,
            vectors: None,
        }
    }

    fn drop_shape(classes: &[String]) -> Shape {
        ShapeRequest { action: "drop", classes, ttl_ms: Some(600_000), ..Default::default() }.check().unwrap()
    }

    #[test]
    fn a_signature_becomes_one_rule_per_port_span() {
        let rules = rules_from(&sig(), &drop_shape(&[]), DEFAULT_MAX_COLLATERAL).unwrap();
        assert_eq!(rules.len(), 1);
        let (p, s) = &rules[0];
        assert_eq!(p.to_string(), "0.0.0.0/0");
        assert!(p.is_any_source(), "the rule names no source: known peers pass it");
        assert_eq!(s.classes, vec!["udp"]);
        assert_eq!(s.m.dport, Some(Span::one(27015)));
        assert_eq!(s.m.dst, Some("192.0.2.2/32".parse().unwrap()));
        assert_eq!(s.m.length, Some(Span { lo: 140, hi: 144 }));
        assert_eq!(s.action, Action::Drop);
        assert_eq!(s.ttl, Some(std::time::Duration::from_secs(600)));
        // Every rule it makes passes the rule check.
        let req = s.request(*p, "udp_flood on eth0", crate::mitigate::rule::Origin::operator());
        assert_eq!(req.check().unwrap().shape.m, s.m);

        let mut two = sig();
        two.dst_ports = vec![Span::one(80), Span::one(443)];
        two.dst = None;
        let rules = rules_from(&two, &drop_shape(&[]), DEFAULT_MAX_COLLATERAL).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].0.to_string(), "::/0", "no attacked address: both families");
    }

    #[test]
    fn syn_cookies_protect_the_attacked_ports() {
        let shape = ShapeRequest {
            action: "syn_cookies",
            m: Match { dport: Some(Span::one(1)), ..Default::default() },
            ttl_ms: Some(600_000),
            ..Default::default()
        }
        .check()
        .unwrap();
        let mut s = sig();
        s.classes = vec!["tcp_syn".into()];
        s.dst_ports = vec![Span::one(80), Span::one(443)];
        // The step's port wins; without one, the signature's.
        let rules = syn_cookie_rules(Some(&s), &shape).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].1.m.dport, Some(Span::one(1)));
        let open = Shape { m: Match::default(), ..shape.clone() };
        let rules = syn_cookie_rules(Some(&s), &open).unwrap();
        assert_eq!(rules.iter().map(|r| r.1.m.dport.unwrap().lo).collect::<Vec<_>>(), vec![80, 443]);
        assert_eq!(rules[0].0.to_string(), "0.0.0.0/0");
        assert_eq!(rules[0].1.m.dst, Some("192.0.2.2/32".parse().unwrap()));
        assert_eq!(rules[0].1.action, Action::SynCookies);
        s.dst_ports.clear();
        assert!(matches!(syn_cookie_rules(Some(&s), &open), Err(DeriveError::NoPorts(_))));
        assert!(matches!(syn_cookie_rules(None, &open), Err(DeriveError::NoPorts(_))));
    }

    #[test]
    fn refusals_say_why() {
        let mut s = sig();
        s.collateral = 0.05;
        let e = rules_from(&s, &drop_shape(&[]), DEFAULT_MAX_COLLATERAL).unwrap_err();
        assert!(
            e.to_string()
                .contains("would also match 5.00% of the interface's peacetime traffic, above max_collateral 1.00%"),
            "{e}"
        );
        assert!(rules_from(&s, &drop_shape(&[]), 0.10).is_ok(), "a step may accept more");
        let mut s = sig();
        s.peacetime_samples = 3;
        assert_eq!(rules_from(&s, &drop_shape(&[]), 0.01).unwrap_err(), DeriveError::NoPeacetime(3));
        let mut s = sig();
        s.dst_ports = vec![Span::one(1), Span::one(2), Span::one(3)];
        s.src_ports = vec![Span::one(4), Span::one(5)];
        assert!(matches!(rules_from(&s, &drop_shape(&[]), 0.01), Err(DeriveError::TooMany(_, 6))));
        let e = rules_from(&sig(), &drop_shape(&["tcp".into()]), 0.01).unwrap_err();
        assert!(e.to_string().contains("have none in common"), "{e}");
        // A step's class narrows the signature's.
        let mut s = sig();
        s.classes = vec!["dns_response".into(), "udp_amplification".into()];
        let rules = rules_from(&s, &drop_shape(&["udp_amplification".into()]), 0.01).unwrap();
        assert_eq!(rules[0].1.classes, vec!["udp_amplification"]);
    }
}
