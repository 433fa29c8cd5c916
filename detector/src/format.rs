//! Numbers for people: packet and bit rates with SI prefixes, one style
//! everywhere (the log's summary line, chat cards, alert descriptions), so
//! an operator reads the same figure the same way wherever it shows up.

/// `x` scaled to a prefix: `(1.25, "M")` for 1,250,000; no prefix below 1,000.
pub fn si(x: f64) -> (f64, &'static str) {
    if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    }
}

/// `850 pps`, `20.1k pps`, `1.2M pps`.
pub fn pps(x: f64) -> String {
    match si(x) {
        (v, "") => format!("{v:.0} pps"),
        (v, p) => format!("{v:.1}{p} pps"),
    }
}

/// `900 bit/s`, `512.0 Mbit/s`, `1.5 Gbit/s`.
pub fn bits(x: f64) -> String {
    match si(x) {
        (v, "") => format!("{v:.0} bit/s"),
        (v, p) => format!("{v:.1} {p}bit/s"),
    }
}

/// `1,234`: a count with its thousands apart.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_the_same_everywhere() {
        assert_eq!(pps(0.0), "0 pps");
        assert_eq!(pps(850.4), "850 pps");
        assert_eq!(pps(20_100.0), "20.1k pps");
        assert_eq!(pps(1_250_000.0), "1.2M pps");
        assert_eq!(pps(3.5e9), "3.5G pps");
        assert_eq!(bits(900.0), "900 bit/s");
        assert_eq!(bits(5.12e8), "512.0 Mbit/s");
        assert_eq!(bits(1.5e9), "1.5 Gbit/s");
        assert_eq!(si(999.0), (999.0, ""));
        assert_eq!(si(1000.0), (1.0, "k"));
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234), "1,234");
        assert_eq!(count(4_096_000), "4,096,000");
    }
}
