//! The generic cell rate algorithm (GCRA) on one atomic word.
//!
//! A [`Cell`] stores one number, the theoretical arrival time (TAT): the
//! moment at which the bucket would be full again if nothing else came. A
//! request at `now` is allowed when the TAT is at most `tolerance` ahead of
//! `now`, and then pushes the TAT one emission interval further. That is a
//! token bucket of `burst` tokens refilled one per interval, kept as a single
//! timestamp instead of a count and a refill time, so one compare-exchange
//! updates it without a lock.
//!
//! Time is a parameter ([`Nanos`] from a [`Clock`]), so tests never sleep.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::MeterError;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MINUTE: u64 = 60 * NANOS_PER_SEC;
const NANOS_PER_MICRO: u64 = 1_000;

/// How long, in nanoseconds, a refusal because the limiter could not decide
/// asks the client to wait: the outage's end is unknown, so a short, fixed
/// hint.
const UNAVAILABLE_RETRY: u64 = NANOS_PER_SEC;

/// A moment as nanoseconds since a [`Clock`]'s epoch. Moments from
/// different clocks are not comparable: every cell is checked with one
/// clock's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl From<Duration> for Nanos {
    /// Saturates at `u64::MAX` nanoseconds (about 584 years).
    fn from(duration: Duration) -> Self {
        Self(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A monotonic clock: [`Nanos`] elapsed since the clock was made. Copies
/// share the epoch, so cells checked with any copy agree.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self { epoch: Instant::now() }
    }

    /// Nanoseconds since the epoch; never goes backwards.
    pub fn now(&self) -> Nanos {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        // u64 arithmetic rather than `as_nanos`'s u128: this runs per request.
        Nanos(
            elapsed
                .as_secs()
                .saturating_mul(NANOS_PER_SEC)
                .saturating_add(u64::from(elapsed.subsec_nanos())),
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A rate limit: a sustained rate per minute and a burst, the number of
/// requests a full bucket lets through at once. Over any period `t` starting
/// with a full bucket, at most `burst + t / emission_interval` requests pass.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    burst: u32,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far the TAT may run ahead of now: `interval * (burst - 1)`.
    tolerance: u64,
}

impl Limit {
    /// `rate` requests per minute with bursts of up to `burst` requests.
    /// Both must be at least 1; the emission interval is rounded up to whole
    /// nanoseconds, so rounding never admits more than `rate`.
    pub fn per_minute(rate: u32, burst: u32) -> Result<Self, MeterError> {
        let invalid = |reason| MeterError::InvalidLimit { rate, burst, reason };
        if rate == 0 {
            return Err(invalid("the rate must be at least 1 request per minute"));
        }
        if burst == 0 {
            return Err(invalid("the burst must be at least 1 request"));
        }
        let interval = NANOS_PER_MINUTE.div_ceil(u64::from(rate));
        // `tolerance + interval` must fit, with room for `now` beside it.
        match interval.checked_mul(u64::from(burst)) {
            Some(full) if full <= u64::MAX / 2 => {
                Ok(Self { burst, interval, tolerance: full - interval })
            }
            _ => Err(invalid("the burst spans more time than a limit can hold")),
        }
    }

    /// The time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// How far ahead of now the TAT may be for a request to pass:
    /// `emission_interval * (burst - 1)`.
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.tolerance)
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The value of `RateLimit-Limit`: the bucket's size, which is the burst.
    /// `RateLimit-Remaining` counts down from it and is back at it exactly
    /// when `RateLimit-Reset` reaches 0.
    pub fn limit(&self) -> u32 {
        self.burst
    }

    /// One replica's share when `parts` replicas enforce this limit each on
    /// its own: the interval `parts` times longer and the burst divided by
    /// `parts` (at least 1). `parts` of 0 is taken as 1.
    pub fn divided(&self, parts: u32) -> Self {
        let parts = parts.max(1);
        let burst = (self.burst / parts).max(1);
        let interval = self.interval.saturating_mul(u64::from(parts));
        Self { burst, interval, tolerance: interval.saturating_mul(u64::from(burst - 1)) }
    }

    /// The emission interval in whole microseconds, rounded up: the Redis
    /// script's unit, in which every number stays exact in Lua's doubles.
    pub(crate) fn interval_micros(&self) -> u64 {
        self.interval.div_ceil(NANOS_PER_MICRO)
    }

    /// The tolerance in the script's unit, consistent with
    /// [`Self::interval_micros`].
    pub(crate) fn tolerance_micros(&self) -> u64 {
        self.interval_micros().saturating_mul(u64::from(self.burst - 1))
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("burst", &self.burst)
            .field("emission_interval", &self.emission_interval())
            .finish()
    }
}

/// One limited key's state: the theoretical arrival time in nanoseconds of
/// the [`Clock`] its checks read. A new cell is a full bucket.
#[derive(Debug, Default)]
pub struct Cell {
    tat: AtomicU64,
}

impl Cell {
    /// A full bucket.
    pub const fn new() -> Self {
        Self { tat: AtomicU64::new(0) }
    }

    /// Decides one request at `now` and, if it is allowed, takes its token.
    /// A refused request changes nothing. Lock-free: a compare-exchange loop
    /// that retries only when another thread took a token in between.
    pub fn check(&self, limit: &Limit, now: Nanos) -> Decision {
        let now = now.0;
        // Relaxed is enough: the cell publishes no other memory, and every
        // read-modify-write of one atomic is totally ordered anyway.
        let mut stored = self.tat.load(Ordering::Relaxed);
        loop {
            let ahead = stored.saturating_sub(now);
            if ahead > limit.tolerance {
                return Decision::limited(limit.burst, ahead, ahead - limit.tolerance);
            }
            let new_tat = now + ahead + limit.interval;
            match self.tat.compare_exchange_weak(
                stored,
                new_tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let remaining = (limit.tolerance - ahead) / limit.interval;
                    return Decision::admitted(limit.burst, remaining, ahead + limit.interval);
                }
                Err(actual) => stored = actual,
            }
        }
    }
}

/// Why a request was let through or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Within the limit; the request took a token.
    Allowed,
    /// Over the limit: answer 429 with `Retry-After`.
    Limited,
    /// The shared limiter could not decide and the fallback is
    /// [`Fallback::Deny`](crate::Fallback::Deny): answer with the reason
    /// `limiter_unavailable`.
    Unavailable,
}

/// One rate-limit decision, with what the `Retry-After` and the
/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers
/// (draft-ietf-httpapi-ratelimit-headers) need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    verdict: Verdict,
    limit: u32,
    remaining: u32,
    // Nanoseconds, made into `Duration`s only when asked: the check itself
    // stays a few integer operations.
    reset: u64,
    /// Meaningful only when refused, and then above 0.
    retry_after: u64,
}

impl Decision {
    fn admitted(limit: u32, remaining: u64, reset: u64) -> Self {
        Self {
            verdict: Verdict::Allowed,
            limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset,
            retry_after: 0,
        }
    }

    fn limited(limit: u32, reset: u64, retry_after: u64) -> Self {
        Self { verdict: Verdict::Limited, limit, remaining: 0, reset, retry_after }
    }

    /// A decision the Redis script returned, its times in microseconds.
    pub(crate) fn from_micros(
        limit: &Limit,
        allowed: bool,
        remaining: u64,
        reset: u64,
        retry_after: u64,
    ) -> Self {
        let nanos = |micros: u64| micros.saturating_mul(NANOS_PER_MICRO);
        if allowed {
            Self::admitted(limit.burst, remaining, nanos(reset))
        } else {
            // Refused means more than the tolerance ahead: at least 1 µs.
            Self::limited(limit.burst, nanos(reset), nanos(retry_after.max(1)))
        }
    }

    /// The refusal when no limiter could decide (see [`Verdict::Unavailable`]):
    /// nothing remains, and the client may retry in a second.
    pub fn unavailable(limit: &Limit) -> Self {
        Self {
            verdict: Verdict::Unavailable,
            limit: limit.burst,
            remaining: 0,
            reset: UNAVAILABLE_RETRY,
            retry_after: UNAVAILABLE_RETRY,
        }
    }

    /// Whether the request may go on.
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    /// Allowed, limited, or refused because the limiter was unavailable.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// `RateLimit-Limit`: the size of the bucket (the limit's burst).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// `RateLimit-Remaining`: how many more requests would pass right now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// How long until the bucket is full again (`remaining == limit`).
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// When refused, how long until a request would pass; `None` when allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed()).then(|| Duration::from_nanos(self.retry_after))
    }

    /// `RateLimit-Reset`: [`Self::reset`] in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset.div_ceil(NANOS_PER_SEC)
    }

    /// `Retry-After`: [`Self::retry_after`] in whole seconds, rounded up and
    /// never 0 (a 0 would invite an immediate retry that is refused again).
    pub fn retry_after_secs(&self) -> Option<u64> {
        (!self.allowed()).then(|| self.retry_after.div_ceil(NANOS_PER_SEC).max(1))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        thread,
    };

    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn at(secs: f64) -> Nanos {
        Nanos((secs * SEC as f64) as u64)
    }

    #[test]
    fn limit_is_validated() {
        assert!(matches!(Limit::per_minute(0, 1), Err(MeterError::InvalidLimit { .. })));
        assert!(matches!(Limit::per_minute(1, 0), Err(MeterError::InvalidLimit { .. })));
        // One a minute with a burst of u32::MAX spans 8000 years.
        let error = Limit::per_minute(1, u32::MAX).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid limit of 1 per minute with a burst of 4294967295: \
             the burst spans more time than a limit can hold"
        );
        let limit = Limit::per_minute(60, 10).unwrap();
        assert_eq!(limit.emission_interval(), Duration::from_secs(1));
        assert_eq!(limit.tolerance(), Duration::from_secs(9));
        assert_eq!(limit.limit(), 10);
        // 7 a minute is 8.571428571428… s: rounded up, never faster.
        let limit = Limit::per_minute(7, 1).unwrap();
        assert_eq!(limit.emission_interval(), Duration::from_nanos(8_571_428_572));
        assert_eq!(limit.tolerance(), Duration::ZERO);
    }

    #[test]
    fn burst_passes_then_the_pace_holds() {
        let limit = Limit::per_minute(60, 5).unwrap();
        let cell = Cell::new();
        let start = at(100.0);
        for n in 0..5 {
            let decision = cell.check(&limit, start);
            assert!(decision.allowed(), "request {n} of the burst");
            assert_eq!(decision.remaining(), 4 - n);
        }
        assert_eq!(cell.check(&limit, start).verdict(), Verdict::Limited);
        // One token a second from then on, never two.
        for second in 1..=10 {
            let now = at(100.0 + f64::from(second));
            assert!(cell.check(&limit, now).allowed(), "second {second}");
            assert!(!cell.check(&limit, now).allowed(), "second {second}, twice");
        }
        // Half a second after a token was taken, still nothing.
        assert!(!cell.check(&limit, at(110.5)).allowed());
    }

    #[test]
    fn refused_requests_do_not_consume() {
        let limit = Limit::per_minute(60, 1).unwrap();
        let cell = Cell::new();
        assert!(cell.check(&limit, at(10.0)).allowed());
        // Hammering while refused does not push the next token further out.
        for _ in 0..1_000 {
            assert!(!cell.check(&limit, at(10.5)).allowed());
        }
        assert!(cell.check(&limit, at(11.0)).allowed());
    }

    #[test]
    fn remaining_reset_and_retry_after_are_exact() {
        let limit = Limit::per_minute(60, 3).unwrap();
        let cell = Cell::new();
        let first = cell.check(&limit, at(50.0));
        assert_eq!(
            first,
            Decision {
                verdict: Verdict::Allowed,
                limit: 3,
                remaining: 2,
                reset: SEC,
                retry_after: 0
            }
        );
        assert_eq!(first.reset(), Duration::from_secs(1));
        assert_eq!(first.reset_secs(), 1);
        assert_eq!(first.retry_after_secs(), None);

        let second = cell.check(&limit, at(50.0));
        assert_eq!((second.remaining(), second.reset()), (1, Duration::from_secs(2)));
        let third = cell.check(&limit, at(50.25));
        assert_eq!((third.remaining(), third.reset()), (0, Duration::from_millis(2_750)));
        assert_eq!(third.reset_secs(), 3);

        let refused = cell.check(&limit, at(50.5));
        assert_eq!(
            refused,
            Decision {
                verdict: Verdict::Limited,
                limit: 3,
                remaining: 0,
                reset: 2_500_000_000,
                retry_after: 500_000_000,
            }
        );
        assert_eq!(refused.reset(), Duration::from_millis(2_500));
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
        assert_eq!(refused.reset_secs(), 3);
        assert_eq!(refused.retry_after_secs(), Some(1));

        // A nanosecond short of the token still rounds up to one second.
        let almost = cell.check(&limit, Nanos(at(51.0).0 - 1));
        assert_eq!(almost.retry_after(), Some(Duration::from_nanos(1)));
        assert_eq!(almost.retry_after_secs(), Some(1));

        // Three seconds after the last token the bucket is full again.
        let full = cell.check(&limit, at(53.0));
        assert_eq!((full.remaining(), full.reset()), (2, Duration::from_secs(1)));
    }

    #[test]
    fn divided_limit_is_one_replicas_share() {
        let limit = Limit::per_minute(600, 10).unwrap();
        let share = limit.divided(3);
        assert_eq!(share.burst(), 3);
        assert_eq!(share.emission_interval(), Duration::from_millis(300));
        assert_eq!(share.tolerance(), Duration::from_millis(600));
        assert_eq!(limit.divided(0), limit);
        assert_eq!(limit.divided(1), limit);
        assert_eq!(limit.divided(50).burst(), 1);
    }

    #[test]
    fn unavailable_refuses_with_a_retry_hint() {
        let decision = Decision::unavailable(&Limit::per_minute(60, 4).unwrap());
        assert!(!decision.allowed());
        assert_eq!(decision.verdict(), Verdict::Unavailable);
        assert_eq!((decision.limit(), decision.remaining()), (4, 0));
        assert_eq!(decision.retry_after_secs(), Some(1));
    }

    #[test]
    fn clock_moves_forward() {
        let clock = Clock::new();
        let copy = clock;
        let first = clock.now();
        assert!(copy.now() >= first);
    }

    #[test]
    fn threads_at_one_instant_share_exactly_one_burst() {
        let limit = Limit::per_minute(1, 1_000).unwrap();
        let cell = Arc::new(Cell::new());
        let barrier = Arc::new(Barrier::new(4));
        let allowed: u32 = (0..4)
            .map(|_| {
                let (cell, barrier) = (cell.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    (0..10_000).filter(|_| cell.check(&limit, Nanos(SEC)).allowed()).count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap() as u32)
            .sum();
        assert_eq!(allowed, 1_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Several threads share one cell and one clock they push forward by
        /// random steps; whatever the interleaving, no more than
        /// `burst + elapsed / interval` requests pass.
        #[test]
        fn concurrent_checks_never_admit_more_than_the_limit(
            rate in 1_u32..100_000,
            burst in 1_u32..50,
            threads in 2_usize..5,
            steps in proptest::collection::vec(0_u64..2_000_000_000, 50..400),
        ) {
            let limit = Limit::per_minute(rate, burst).unwrap();
            let cell = Arc::new(Cell::new());
            let clock = Arc::new(AtomicU64::new(0));
            let steps = Arc::new(steps);
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|offset| {
                    let (cell, clock, steps, barrier) =
                        (cell.clone(), clock.clone(), steps.clone(), barrier.clone());
                    thread::spawn(move || {
                        barrier.wait();
                        let mut allowed = 0_u64;
                        for (n, step) in steps.iter().enumerate() {
                            // Each thread advances the shared clock on its own
                            // share of the steps, reads it on every one.
                            let now = if n % threads == offset {
                                clock.fetch_add(*step, Ordering::Relaxed) + step
                            } else {
                                clock.load(Ordering::Relaxed)
                            };
                            allowed += u64::from(cell.check(&limit, Nanos(now)).allowed());
                        }
                        allowed
                    })
                })
                .collect();
            let allowed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let elapsed = clock.load(Ordering::Relaxed);
            let bound = u64::from(burst) + elapsed / limit.interval;
            prop_assert!(allowed <= bound, "{allowed} allowed, at most {bound}");
        }

        /// One thread, random times: the cell agrees with a plain token
        /// bucket kept in exact integer nanoseconds.
        #[test]
        fn sequential_checks_match_a_token_bucket(
            rate in 1_u32..10_000,
            burst in 1_u32..20,
            gaps in proptest::collection::vec(0_u64..20_000_000_000, 1..200),
        ) {
            let limit = Limit::per_minute(rate, burst).unwrap();
            let cell = Cell::new();
            // The bucket: tokens scaled by the interval, so refills are exact.
            let capacity = u64::from(burst) * limit.interval;
            let (mut level, mut last, mut now) = (capacity, 0_u64, 0_u64);
            for gap in gaps {
                now += gap;
                level = (level + (now - last)).min(capacity);
                last = now;
                let expected = level >= limit.interval;
                if expected {
                    level -= limit.interval;
                }
                let decision = cell.check(&limit, Nanos(now));
                prop_assert_eq!(decision.allowed(), expected);
                prop_assert_eq!(u64::from(decision.remaining()), level / limit.interval);
                prop_assert_eq!(decision.reset(), Duration::from_nanos(capacity - level));
            }
        }
    }
}
