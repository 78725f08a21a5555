//! Model spend per tenant and calendar month (UTC) against its cost caps.
//!
//! A call first reserves the most it can cost; when its answer has ended,
//! the reservation is settled: replaced by what the call actually cost. A
//! reservation that would take the month's spend (settled and reserved)
//! past the hard cap is refused, so parallel calls cannot pass the cap
//! unless a call costs more than it reserved, and then by that excess
//! only.
//!
//! With Redis, every gateway replica shares one counter per tenant and
//! month (`{prefix}budget:{tenant}:{YYYY-MM}`), changed by one Lua script
//! per reservation and per settlement. A counter Redis does not hold (the
//! period's first call, a flush, a restart without persistence) is seeded
//! from the durable [`Ledger`], with a new epoch: a reservation made in
//! the lost counter settles into the new one with its whole actual cost,
//! which the ledger could not hold yet when the counter was seeded (the
//! call's usage reaches the ledger after its settlement). Without Redis,
//! or while it cannot answer and the tenant's fallback is `local`, each
//! process keeps its own counter, seeded from the ledger the same way.
//!
//! Settling never waits on the request path: in Redis it is a spawned
//! script; when it fails, the counter keeps the reservation, counting too
//! much rather than too little.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use redis::{Script, aio::ConnectionManager};
use time::{Date, Month, OffsetDateTime};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::{
    Clock, Fallback, Limiter,
    redis_limit::{RedisBackend, RedisCheckError},
};

/// How long a settlement may take in Redis before it is given up (the
/// counter then keeps the reservation).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a month's counter outlives the month in Redis.
const COUNTER_KEPT_AFTER: i64 = 7 * 86_400;

/// A tenant's caps in micro-units of the prices' currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub soft_micros: u64,
    pub hard_micros: u64,
}

impl From<&bulkhead_model::CostCaps> for Caps {
    fn from(caps: &bulkhead_model::CostCaps) -> Self {
        Self { soft_micros: caps.soft_micros(), hard_micros: caps.hard_micros() }
    }
}

/// A calendar month, UTC: the period budgets and billing run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    year: i32,
    month: Month,
}

impl Period {
    /// The month `at` falls in.
    pub fn of(at: OffsetDateTime) -> Self {
        let at = at.to_offset(time::UtcOffset::UTC);
        Self { year: at.year(), month: at.month() }
    }

    /// `YYYY-MM`, as [`Display`](fmt::Display) writes it.
    pub fn parse(text: &str) -> Option<Self> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let year: i32 = year.parse().ok()?;
        let month = Month::try_from(month.parse::<u8>().ok()?).ok()?;
        // Within what `Date` holds, so the period's days always exist.
        Date::from_calendar_date(year, month, 1).ok()?;
        Some(Self { year, month })
    }

    /// The month after.
    pub fn next(self) -> Self {
        match self.month {
            Month::December => Self { year: self.year + 1, month: Month::January },
            month => Self { year: self.year, month: month.next() },
        }
    }

    /// Its first day and the next month's, as `YYYY-MM-DD`: the ledger's
    /// days from (included) and until (excluded).
    pub fn days(self) -> (String, String) {
        (format!("{self}-01"), format!("{}-01", self.next()))
    }

    /// Unix seconds at which the month ends.
    fn ends_at(self) -> i64 {
        let next = self.next();
        Date::from_calendar_date(next.year, next.month, 1)
            .map(|d| d.midnight().assume_utc().unix_timestamp())
            .unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, u8::from(self.month))
    }
}

/// Where the spend of past calls is kept durably: the control plane's
/// usage ledger.
#[async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// What the tenant spent in `period` as far as the ledger knows, in
    /// micro-units.
    async fn spent(&self, tenant: Uuid, period: Period) -> Result<u64, String>;
}

/// What a reservation came to.
#[derive(Debug)]
pub enum Spend {
    Reserved(Reservation),
    /// Reserving would pass the hard cap; `spent` is the period's spend,
    /// reservations included.
    Exhausted {
        spent: u64,
    },
    /// The spend cannot be known: Redis cannot answer and the tenant's
    /// fallback is `deny`, or the ledger cannot be read to seed a counter.
    Unavailable,
}

/// A call's reserved cost, until it is settled. Dropped unsettled (the call
/// ended before any upstream answered), it is released.
#[must_use = "a reservation is settled with the call's cost, or released when dropped"]
pub struct Reservation {
    amount: u64,
    /// The period's spend with this reservation.
    pub spent: u64,
    pub period: Period,
    counter: Counter,
    settled: bool,
}

enum Counter {
    Local(Arc<AtomicU64>),
    Redis { connection: ConnectionManager, script: Arc<Script>, key: String, epoch: String },
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("amount", &self.amount)
            .field("spent", &self.spent)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// Replaces the reservation by what the call cost.
    pub fn settle(mut self, actual: u64) {
        self.apply(actual);
    }

    fn apply(&mut self, actual: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        match &self.counter {
            Counter::Local(spent) => {
                // The counter holds this reservation: it cannot go below 0.
                if actual >= self.amount {
                    spent.fetch_add(actual - self.amount, Ordering::Relaxed);
                } else {
                    spent.fetch_sub(self.amount - actual, Ordering::Relaxed);
                }
            }
            Counter::Redis { connection, script, key, epoch } => {
                let delta =
                    i64::try_from(i128::from(actual) - i128::from(self.amount)).unwrap_or(i64::MAX);
                let actual = i64::try_from(actual).unwrap_or(i64::MAX);
                let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
                let (mut connection, script, key, epoch) =
                    (connection.clone(), Arc::clone(script), key.clone(), epoch.clone());
                runtime.spawn(async move {
                    let settled = tokio::time::timeout(
                        SETTLE_TIMEOUT,
                        script
                            .key(&key)
                            .arg(delta)
                            .arg(epoch)
                            .arg(actual)
                            .invoke_async::<i64>(&mut connection),
                    )
                    .await;
                    if !matches!(settled, Ok(Ok(_))) {
                        warn!(key, delta, "a model call's cost could not be settled in redis; its reservation stays counted");
                    }
                });
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.apply(0);
    }
}

/// Whether `error` says Redis could not be reached (rather than answered
/// with an error).
fn unreachable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// One tenant's counter in this process, for one period.
struct LocalBudget {
    /// The Redis outage it counts through; a counter of an earlier outage
    /// is seeded again, the ledger having caught up since.
    outage: u64,
    spent: tokio::sync::OnceCell<Arc<AtomicU64>>,
}

/// Every tenant's budget, as the gateway checks it.
pub struct Budgets {
    clock: Clock,
    redis: Option<Arc<RedisBackend>>,
    reserve: Script,
    settle: Arc<Script>,
    ledger: Option<Arc<dyn Ledger>>,
    local: Mutex<HashMap<(Uuid, Period), Arc<LocalBudget>>>,
    /// Redis outages so far (0 without Redis), and whether Redis answered
    /// last.
    outages: AtomicU64,
    answering: AtomicBool,
    noticed: Mutex<HashSet<(Uuid, Period)>>,
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("redis", &self.redis)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Budgets {
    /// Budgets kept where `limiter` keeps its limits (in this process, or
    /// in its Redis under its prefix), seeded from `ledger` (from 0 when
    /// there is none).
    pub fn new(limiter: &Limiter, ledger: Option<Arc<dyn Ledger>>) -> Self {
        Self {
            clock: limiter.clock(),
            redis: limiter.redis_backend(),
            reserve: Script::new(include_str!("budget_reserve.lua")),
            settle: Arc::new(Script::new(include_str!("budget_settle.lua"))),
            ledger,
            local: Mutex::default(),
            outages: AtomicU64::new(0),
            answering: AtomicBool::new(true),
            noticed: Mutex::default(),
        }
    }

    /// Reserves `amount` micro-units of the tenant's budget for the period
    /// `at` falls in, unless that would pass `caps.hard_micros`.
    pub async fn reserve(
        &self,
        tenant: Uuid,
        caps: Caps,
        amount: u64,
        at: OffsetDateTime,
        fallback: Fallback,
    ) -> Spend {
        let period = Period::of(at);
        if let Some(redis) = &self.redis {
            // Paused by the rate limiter's error or by ours: an outage
            // either way.
            if !redis.paused(self.clock.now()) {
                match self.reserve_in_redis(redis, tenant, period, at, caps, amount).await {
                    Ok(spend) => {
                        self.answering.store(true, Ordering::Relaxed);
                        return spend;
                    }
                    Err(RedisCheckError::Redis(error)) if !unreachable(&error) => {
                        // Redis answered, with an error: not an outage to
                        // fall back through, nor one to pause for.
                        warn!(%tenant, %error, "redis refused a budget reservation; the call is refused");
                        return Spend::Unavailable;
                    }
                    Err(error) => {
                        debug!(%error, "a budget reservation falls back");
                        redis.pause(self.clock.now());
                    }
                }
            }
            if self.answering.swap(false, Ordering::Relaxed) {
                self.outages.fetch_add(1, Ordering::Relaxed);
            }
            if fallback == Fallback::Deny {
                return Spend::Unavailable;
            }
        }
        self.reserve_here(tenant, period, caps, amount).await
    }

    /// `true` the first time this process asks for `tenant` and `period`:
    /// whether to give the soft cap's notice (the control plane gives it
    /// once whatever the processes).
    pub fn first_notice(&self, tenant: Uuid, period: Period) -> bool {
        let mut noticed = self.noticed.lock().unwrap_or_else(PoisonError::into_inner);
        if noticed.contains(&(tenant, period)) {
            return false;
        }
        // Past months' notices go when a new one is given.
        noticed.retain(|(_, p)| *p >= period);
        noticed.insert((tenant, period))
    }

    /// Forgets that the notice for `tenant` and `period` was given (it
    /// could not be handed over), so that the next call past the soft cap
    /// gives it again.
    pub fn forget_notice(&self, tenant: Uuid, period: Period) {
        let mut noticed = self.noticed.lock().unwrap_or_else(PoisonError::into_inner);
        noticed.remove(&(tenant, period));
    }

    /// What the ledger says the tenant spent in `period`; `None` (logged)
    /// when it cannot be read, and then the tenant's model calls are
    /// refused rather than let through unmetered.
    async fn seed(&self, tenant: Uuid, period: Period) -> Option<u64> {
        let Some(ledger) = &self.ledger else { return Some(0) };
        match ledger.spent(tenant, period).await {
            Ok(spent) => Some(spent),
            Err(error) => {
                warn!(%tenant, %error, "cannot read the tenant's spend from the ledger; its model calls are refused until it can");
                None
            }
        }
    }

    async fn reserve_here(&self, tenant: Uuid, period: Period, caps: Caps, amount: u64) -> Spend {
        let outage = self.outages.load(Ordering::Relaxed);
        let budget = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            match local.get(&(tenant, period)) {
                Some(budget) if budget.outage == outage => Arc::clone(budget),
                _ => {
                    // Past months' counters go when a new one is made.
                    local.retain(|(_, p), _| *p >= period);
                    let budget =
                        Arc::new(LocalBudget { outage, spent: tokio::sync::OnceCell::new() });
                    local.insert((tenant, period), Arc::clone(&budget));
                    budget
                }
            }
        };
        let seeded = budget
            .spent
            .get_or_try_init(|| async {
                self.seed(tenant, period)
                    .await
                    .map(|spent| Arc::new(AtomicU64::new(spent)))
                    .ok_or(())
            })
            .await;
        let Ok(spent) = seeded.map(Arc::clone) else { return Spend::Unavailable };
        let reserved = spent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            current.checked_add(amount).filter(|after| *after <= caps.hard_micros)
        });
        match reserved {
            Ok(before) => Spend::Reserved(Reservation {
                amount,
                spent: before + amount,
                period,
                counter: Counter::Local(spent),
                settled: false,
            }),
            Err(current) => Spend::Exhausted { spent: current },
        }
    }

    async fn reserve_in_redis(
        &self,
        redis: &RedisBackend,
        tenant: Uuid,
        period: Period,
        at: OffsetDateTime,
        caps: Caps,
        amount: u64,
    ) -> Result<Spend, RedisCheckError> {
        let key = format!("{}budget:{tenant}:{period}", redis.prefix());
        let left = period.ends_at().saturating_sub(at.unix_timestamp()).max(0);
        let ttl = left.saturating_add(COUNTER_KEPT_AFTER);
        let mut seed = String::new();
        loop {
            let mut invocation = self.reserve.key(&key);
            // The epoch of a counter seeded now; made only when seeding.
            let epoch =
                if seed.is_empty() { String::new() } else { Uuid::new_v4().simple().to_string() };
            invocation.arg(amount).arg(caps.hard_micros).arg(ttl).arg(&seed).arg(epoch);
            let mut connection = redis.connection();
            let (verdict, spent, epoch): (i64, i64, String) =
                tokio::time::timeout(redis.timeout(), invocation.invoke_async(&mut connection))
                    .await
                    .map_err(|_| RedisCheckError::Timeout(redis.timeout()))??;
            let spent = u64::try_from(spent).unwrap_or(0);
            match verdict {
                1 => {
                    return Ok(Spend::Reserved(Reservation {
                        amount,
                        spent,
                        period,
                        counter: Counter::Redis {
                            connection,
                            script: Arc::clone(&self.settle),
                            key,
                            epoch,
                        },
                        settled: false,
                    }));
                }
                0 => return Ok(Spend::Exhausted { spent }),
                _ if seed.is_empty() => match self.seed(tenant, period).await {
                    Some(spent) => seed = spent.to_string(),
                    None => return Ok(Spend::Unavailable),
                },
                // Seeded, yet missing: Redis evicts faster than it keeps.
                _ => return Ok(Spend::Unavailable),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(soft: u64, hard: u64) -> Caps {
        Caps { soft_micros: soft, hard_micros: hard }
    }

    #[derive(Debug)]
    struct Fixed(Result<u64, String>);

    #[async_trait]
    impl Ledger for Fixed {
        async fn spent(&self, _: Uuid, _: Period) -> Result<u64, String> {
            self.0.clone()
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn periods_are_utc_months() {
        let period = Period::of(at("2026-12-31T23:30:00-01:00"));
        assert_eq!(period.to_string(), "2027-01");
        assert_eq!(period.days(), ("2027-01-01".to_owned(), "2027-02-01".to_owned()));
        let december = Period::parse("2026-12").unwrap();
        assert_eq!(december.next(), period);
        assert_eq!(december.ends_at(), at("2027-01-01T00:00:00Z").unix_timestamp());
        for bad in ["2026-13", "2026-1", "26-12", "2026/12", "", "2026-00", "abcd-12"] {
            assert_eq!(Period::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn parallel_reservations_never_pass_the_hard_cap() {
        let budgets = Arc::new(Budgets::new(&Limiter::local(), None));
        let tenant = Uuid::from_u128(1);
        let now = at("2026-12-04T10:00:00Z");
        let calls = (0..50).map(|_| {
            let budgets = Arc::clone(&budgets);
            tokio::spawn(async move {
                budgets.reserve(tenant, caps(50, 100), 3, now, Fallback::Local).await
            })
        });
        let mut reserved = Vec::new();
        for call in calls {
            if let Spend::Reserved(r) = call.await.unwrap() {
                reserved.push(r);
            }
        }
        assert_eq!(reserved.len(), 33, "33 × 3 fit in 100");
        // Settling for less frees room for exactly that much more.
        for r in reserved.drain(..3) {
            r.settle(1);
        }
        let more = budgets.reserve(tenant, caps(50, 100), 7, now, Fallback::Local).await;
        let Spend::Reserved(more) = more else { panic!("{more:?}") };
        assert_eq!(more.spent, 100);
        assert!(matches!(
            budgets.reserve(tenant, caps(50, 100), 1, now, Fallback::Local).await,
            Spend::Exhausted { spent: 100 }
        ));
        // Released unsettled: nothing spent.
        drop(more);
        drop(reserved);
        let Spend::Reserved(last) =
            budgets.reserve(tenant, caps(50, 100), 97, now, Fallback::Local).await
        else {
            panic!()
        };
        assert_eq!(last.spent, 100, "3 settled at 1 each, and this 97");
    }

    #[tokio::test]
    async fn counters_start_from_the_ledger_each_month() {
        let budgets = Budgets::new(&Limiter::local(), Some(Arc::new(Fixed(Ok(90)))));
        let tenant = Uuid::from_u128(2);
        let december = at("2026-12-30T00:00:00Z");
        let spend = budgets.reserve(tenant, caps(50, 100), 11, december, Fallback::Local).await;
        assert!(matches!(spend, Spend::Exhausted { spent: 90 }), "{spend:?}");
        let january = at("2027-01-01T00:00:00Z");
        let Spend::Reserved(r) =
            budgets.reserve(tenant, caps(50, 100), 10, january, Fallback::Local).await
        else {
            panic!()
        };
        assert_eq!((r.spent, r.period.to_string()), (100, "2027-01".to_owned()));

        let unread = Budgets::new(&Limiter::local(), Some(Arc::new(Fixed(Err("down".into())))));
        let spend = unread.reserve(tenant, caps(50, 100), 1, december, Fallback::Local).await;
        assert!(matches!(spend, Spend::Unavailable), "never free: {spend:?}");
    }

    #[test]
    fn notices_once_per_tenant_and_period() {
        let budgets = Budgets::new(&Limiter::local(), None);
        let december = Period::parse("2026-12").unwrap();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(budgets.first_notice(a, december));
        assert!(!budgets.first_notice(a, december));
        assert!(budgets.first_notice(b, december));
        assert!(budgets.first_notice(a, december.next()));
    }
}
