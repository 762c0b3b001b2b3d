//! Reconnection delays: exponential back-off with jitter, from a seed (no clock, no `rand`).

use std::time::Duration;

/// How reconnection delays grow.
///
/// The delay before attempt `n` (0 for the first reconnection after a healthy connection) is
/// `min(max, initial × 2^n)`, of which a random fraction of at most `jitter` is taken off, so
/// many clients dropped at once (a server restart) spread their reconnections out:
/// `delay ∈ [(1 - jitter) × d, d]` with `d = min(max, initial × 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay. `None`: the server's suggestion (`retry_ms` of its `welcome`), or 1 s
    /// before any server was reached.
    pub initial: Option<Duration>,
    /// The longest delay.
    pub max: Duration,
    /// The largest fraction taken off a delay at random, from 0.0 (none) to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: None,
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

/// The initial delay when neither the configuration nor a server says otherwise.
pub(crate) const FALLBACK_INITIAL: Duration = Duration::from_secs(1);

impl Backoff {
    /// A back-off starting at `initial`, at most `max`, with the default jitter (0.5).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial: Some(initial),
            max,
            ..Self::default()
        }
    }

    /// Sets the jitter (clamped to 0.0..=1.0).
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The un-jittered delay before attempt `attempt`, given the server's suggested delay.
    pub fn ceiling(&self, attempt: u32, suggested: Option<Duration>) -> Duration {
        let initial = self
            .initial
            .or(suggested)
            .unwrap_or(FALLBACK_INITIAL)
            .min(self.max);
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `attempt`: [`Backoff::ceiling`] less a random fraction of at most
    /// `jitter`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, suggested: Option<Duration>, rng: &mut Rng) -> Duration {
        let ceiling = self.ceiling(attempt, suggested);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(1.0 - jitter * rng.next_f64())
    }
}

/// A small deterministic random number generator (SplitMix64), seeded by the caller: the core
/// has no source of randomness of its own. Seed it from anything that differs between clients
/// (time, process id, an address), so that their jitter differs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_bounds() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut rng = Rng::new(7);
        for attempt in 0..100 {
            let ceiling = b.ceiling(attempt, None);
            assert_eq!(
                ceiling,
                Duration::from_millis(100)
                    .saturating_mul(1 << attempt.min(31))
                    .min(Duration::from_secs(5))
            );
            for _ in 0..50 {
                let d = b.delay(attempt, None, &mut rng);
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                assert!(d >= ceiling.mul_f64(0.5), "{d:?} < half of {ceiling:?}");
            }
        }
        assert_eq!(b.ceiling(u32::MAX, None), Duration::from_secs(5));
    }

    #[test]
    fn jitter_spreads_and_is_deterministic_per_seed() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..64)
                .map(|_| b.delay(0, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let mut all = draw(3);
        all.sort();
        all.dedup();
        assert!(all.len() > 60, "jitter spreads delays");
        let none = b.with_jitter(0.0);
        assert_eq!(
            none.delay(0, None, &mut Rng::new(1)),
            Duration::from_secs(1)
        );
        let nan = b.with_jitter(f64::NAN);
        assert_eq!(nan.delay(0, None, &mut Rng::new(1)), Duration::from_secs(1));
    }

    #[test]
    fn the_servers_suggestion_is_the_default_initial_delay() {
        let b = Backoff::default();
        assert_eq!(
            b.ceiling(0, Some(Duration::from_millis(2000))),
            Duration::from_millis(2000)
        );
        assert_eq!(b.ceiling(1, None), FALLBACK_INITIAL * 2);
        assert_eq!(b.ceiling(10, None), Duration::from_secs(30));
    }
}
