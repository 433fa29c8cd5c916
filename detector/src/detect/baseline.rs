//! Learned normal levels: exponentially weighted moving averages of each
//! class's rate and of its variance, over a configurable time constant.

use serde::{Deserialize, Serialize};

use super::config::BaselineConfig;

/// One moving average with its variance (West's incremental form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub mean: f64,
    pub var: f64,
}

impl Ewma {
    /// Folds in `x`, observed over `dt` seconds, with time constant `tau`.
    pub fn update(&mut self, x: f64, dt: f64, tau: f64, first: bool) {
        if first {
            *self = Ewma { mean: x, var: 0.0 };
            return;
        }
        let a = 1.0 - (-dt / tau).exp();
        let diff = x - self.mean;
        self.mean += a * diff;
        self.var = (1.0 - a) * (self.var + a * diff * diff);
    }

    pub fn sd(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// One class's learned pps and bps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassBaseline {
    pub pps: Ewma,
    pub bps: Ewma,
    /// Seconds of traffic learned from (frozen time does not count).
    pub learned_seconds: f64,
}

impl ClassBaseline {
    pub fn learn(&mut self, pps: f64, bps: f64, dt: f64, cfg: &BaselineConfig) {
        if dt <= 0.0 {
            return;
        }
        let tau = cfg.window.as_secs_f64();
        let first = self.learned_seconds == 0.0;
        self.pps.update(pps, dt, tau, first);
        self.bps.update(bps, dt, tau, first);
        self.learned_seconds += dt;
    }

    pub fn warm(&self, cfg: &BaselineConfig) -> bool {
        self.learned_seconds >= cfg.warmup.as_secs_f64()
    }

    /// Whether a saved baseline is one learning could have made: averages
    /// and variances of rates from 0 to what no link carries
    /// ([`MAX_PPS`], [`MAX_BPS`]), and a learned time from 0 to
    /// [`MAX_LEARNED_SECONDS`]. A damaged or hand-edited file fails it: a
    /// huge average would raise the learned threshold above any flood and
    /// blind detection of its class without a word.
    pub fn check(&self) -> Result<(), String> {
        let ewma = |what: &str, e: &Ewma, max: f64| {
            if !(0.0..=max).contains(&e.mean) {
                return Err(format!("its {what} average {:e} is outside 0 to {max:e}", e.mean));
            }
            if !(0.0..=max * max).contains(&e.var) {
                return Err(format!("its {what} variance {:e} is outside 0 to {:e}", e.var, max * max));
            }
            Ok(())
        };
        ewma("pps", &self.pps, MAX_PPS)?;
        ewma("bps", &self.bps, MAX_BPS)?;
        if !(0.0..=MAX_LEARNED_SECONDS).contains(&self.learned_seconds) {
            return Err(format!(
                "its learned time {:e} s is outside 0 to {MAX_LEARNED_SECONDS:e} s",
                self.learned_seconds
            ));
        }
        Ok(())
    }
}

/// Packets a second no link carries (a 400G interface: about 6 * 10^8).
pub const MAX_PPS: f64 = 1e10;
/// Bits a second no link carries (a 400G interface: 4 * 10^11).
pub const MAX_BPS: f64 = 1e13;
/// Three centuries.
pub const MAX_LEARNED_SECONDS: f64 = 1e10;

/// The level above which a signal with moving average `e` is abnormal:
/// both `margin_sigmas` deviations and `margin_ratio` times above normal.
pub fn abnormal_above(e: &Ewma, cfg: &BaselineConfig) -> f64 {
    (e.mean * cfg.margin_ratio).max(e.mean + cfg.margin_sigmas * e.sd())
}

/// The sum of several classes' averages (variances add, as for independent
/// signals).
pub fn sum(parts: impl Iterator<Item = Ewma>) -> Ewma {
    parts.fold(Ewma::default(), |acc, e| Ewma { mean: acc.mean + e.mean, var: acc.var + e.var })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BaselineConfig {
        BaselineConfig {
            window: Duration::from_secs(60),
            warmup: Duration::from_secs(30),
            margin_sigmas: 4.0,
            margin_ratio: 3.0,
        }
    }

    #[test]
    fn converges_to_the_level_and_learns_its_spread() {
        let c = cfg();
        let mut b = ClassBaseline::default();
        // 10 minutes at 1,000 pps +- 100, polled every 100 ms.
        for i in 0..6000 {
            let x = if i % 2 == 0 { 1100.0 } else { 900.0 };
            b.learn(x, x * 512.0, 0.1, &c);
        }
        assert!((b.pps.mean - 1000.0).abs() < 20.0, "{:?}", b.pps);
        assert!((b.pps.sd() - 100.0).abs() < 15.0, "{:?}", b.pps);
        assert!(b.warm(&c));
        // Alarm level: max(3 x 1000, 1000 + 4 x 100).
        assert!((abnormal_above(&b.pps, &c) - 3000.0).abs() < 60.0);
    }

    #[test]
    fn warmup_and_time_constant() {
        let c = cfg();
        let mut b = ClassBaseline::default();
        b.learn(100.0, 0.0, 0.1, &c);
        assert_eq!(b.pps.mean, 100.0);
        assert!(!b.warm(&c));
        // A step to 200: after one time constant the mean has gone 63% of the way.
        for _ in 0..600 {
            b.learn(200.0, 0.0, 0.1, &c);
        }
        assert!((b.pps.mean - (200.0 - 100.0 * (-1.0f64).exp())).abs() < 1.0, "{}", b.pps.mean);
        assert!(b.warm(&c));
        // No time, no learning.
        let before = b;
        b.learn(1e9, 0.0, 0.0, &c);
        assert_eq!(b, before);
    }

    #[test]
    fn sums_add_means_and_variances() {
        let s = sum([Ewma { mean: 10.0, var: 4.0 }, Ewma { mean: 5.0, var: 5.0 }].into_iter());
        assert_eq!(s, Ewma { mean: 15.0, var: 9.0 });
        assert_eq!(s.sd(), 3.0);
    }
}
