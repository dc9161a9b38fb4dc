//! A rate limiter on requests and tokens at once: GCRA on each quantity,
//! callers admitted in FIFO order, token reservations reconciled with the
//! usage a provider reports.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use portable_atomic::AtomicU128;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{ConfigError, LimitError};

/// The window the limits are stated over by default: providers count per minute.
const WINDOW: Duration = Duration::from_secs(60);

/// Limits on requests and tokens per minute, as an LLM provider states them
/// (RPM and TPM), enforced together.
///
/// **What is guaranteed:** in every 60-second window (sliding, not aligned to
/// the clock) at most `requests_per_minute` requests and
/// `tokens_per_minute` tokens are admitted. Each quantity runs a GCRA
/// (generic cell rate algorithm, the continuous form of a token bucket): up
/// to its *burst* may go at once, after which admissions are spaced evenly.
/// To keep the window bound with a burst, the sustained rate is
/// `limit − burst + 1` per minute; the default burst (a tenth of the limit)
/// keeps it at about 90 % of the limit. A quantity without a limit is not
/// checked.
///
/// **Order:** callers are admitted first come, first served. A caller that
/// must wait holds the head of the queue; callers behind it wait even if
/// they are small, so a large request is never starved by a stream of small
/// ones. A caller dropped while it waits leaves the queue and spends nothing.
///
/// **Reconciliation:** tokens are reserved from an estimate; the
/// [`Reservation`] is then told the usage the provider reported, and the
/// difference is refunded or charged, so that the limiter tracks real usage.
/// (Tokens used beyond an estimate were already sent: an estimate below the
/// real usage can make one window exceed the token limit by the
/// difference. Estimate high.)
///
/// **Cost:** a check that admits is one clock read and one compare-and-swap
/// (both quantities' state is one 128-bit word), no lock; a pause or a
/// provider budget in force adds a lock until it ends. The clock is
/// [`Clock::Fast`] (the CPU's time-stamp counter) unless the builder says
/// [`Clock::Tokio`], which tests on tokio's paused clock need.
///
/// ```
/// use std::num::NonZeroU32;
///
/// use perfkit_llm_batcher::RateLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::builder()
///     .requests_per_minute(NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN))
///     .tokens_per_minute(NonZeroU32::new(200_000).unwrap_or(NonZeroU32::MIN))
///     .build()?;
///
/// // Before the call: wait for room for one request of about 1,200 tokens.
/// let reservation = limiter.acquire(1_200).await?;
/// // ... call the provider; it reports 1,050 tokens used ...
/// reservation.reconcile(1_050); // 150 tokens refunded
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    requests: Option<Quota>,
    tokens: Option<Quota>,
    /// Where "now" is read; every time below is in nanoseconds since its base.
    clock: TimeBase,
    /// The theoretical arrival times (GCRA) of the next request (high 64
    /// bits) and the next token (low 64 bits), updated together by one
    /// compare-and-swap: an admission takes both quantities or neither.
    tats: AtomicU128,
    /// A pause or a provider budget is in force: admissions go through
    /// `constraints` (the lock-free path serves only the common case).
    constrained: AtomicBool,
    constraints: Mutex<Constraints>,
    /// Callers queued or being admitted; while any is, newcomers queue too.
    waiting: AtomicUsize,
    /// The queue: whoever holds it is the head.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the head when the state changed in its favour (a refund).
    changed: Notify,
    metrics: LimiterMetrics,
    name: Arc<str>,
}

/// One quantity's GCRA parameters.
#[derive(Debug, Clone, Copy)]
struct Quota {
    limit: u32,
    burst: u32,
    /// Nanoseconds per unit at the sustained rate, rounded up (never faster).
    interval: u64,
}

impl Quota {
    fn new(
        limit: NonZeroU32,
        burst: Option<NonZeroU32>,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        let limit = limit.get();
        let burst = burst.map_or((limit / 10).max(1), NonZeroU32::get);
        if burst > limit {
            return Err(ConfigError::BurstOverLimit { burst, limit });
        }
        let rate = u128::from(limit - burst + 1);
        let nanos = window.as_nanos().div_ceil(rate);
        Ok(Self {
            limit,
            burst,
            interval: u64::try_from(nanos).unwrap_or(u64::MAX),
        })
    }

    /// `units` of this quantity's time.
    fn cost(&self, units: u32) -> u64 {
        self.interval.saturating_mul(u64::from(units))
    }

    /// When `units` may go, given the theoretical arrival time `tat`: at
    /// `tat - (burst - units) · interval` (at once if that is past).
    fn ready_at(&self, tat: u64, units: u32) -> u64 {
        tat.saturating_sub(self.cost(self.burst.saturating_sub(units)))
    }

    /// The arrival time after `units` are admitted at `now`.
    fn take(&self, tat: u64, units: u32, now: u64) -> u64 {
        tat.max(now).saturating_add(self.cost(units))
    }
}

/// Both theoretical arrival times in one word.
fn join(requests_tat: u64, tokens_tat: u64) -> u128 {
    (u128::from(requests_tat) << 64) | u128::from(tokens_tat)
}

/// The theoretical arrival times of requests and tokens.
fn split(tats: u128) -> (u64, u64) {
    // The high and low halves of a u128: each fits a u64 exactly.
    #[allow(clippy::cast_possible_truncation)]
    ((tats >> 64) as u64, tats as u64)
}

/// Where a [`RateLimiter`] reads the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// The CPU's time-stamp counter, calibrated against the OS's monotonic
    /// clock (the [quanta](https://docs.rs/quanta) crate, as governor uses;
    /// the OS clock where the counter is not reliable): about 9 ns a read on
    /// the 2-core x86-64 VM of the benchmarks, against 22 ns for the OS
    /// clock. Does **not** follow tokio's paused test clock.
    #[default]
    Fast,
    /// tokio's clock (`tokio::time::Instant`): follows a paused or advanced
    /// test clock (`#[tokio::test(start_paused = true)]`,
    /// `tokio::time::advance`), so a test of code under the limiter runs in
    /// virtual time. In a build without tokio's `test-util` it is the OS
    /// clock.
    Tokio,
}

/// A [`Clock`] and the instant its readings count from.
#[derive(Debug)]
enum TimeBase {
    /// quanta's clock and its raw reading at the base (counter ticks, scaled
    /// to nanoseconds per difference: no `Duration` on the hot path).
    Fast {
        clock: quanta::Clock,
        base: u64,
    },
    Tokio(Instant),
}

impl TimeBase {
    fn new(clock: Clock) -> Self {
        match clock {
            // The first clock of the process calibrates the counter (about
            // half a millisecond, once): paid here, not by a caller.
            Clock::Fast => {
                let clock = quanta::Clock::new();
                let base = clock.raw();
                Self::Fast { clock, base }
            }
            Clock::Tokio => Self::Tokio(Instant::now()),
        }
    }

    /// Nanoseconds since the base.
    fn now(&self) -> u64 {
        match self {
            Self::Fast { clock, base } => clock.delta_as_nanos(*base, clock.raw()),
            Self::Tokio(base) => nanos(Instant::now().saturating_duration_since(*base)),
        }
    }

    /// `at`, a tokio instant, in this clock's nanoseconds.
    fn nanos_at(&self, at: Instant) -> u64 {
        match self {
            Self::Fast { .. } => {
                let now = self.now();
                let tokio_now = Instant::now();
                match at.checked_duration_since(tokio_now) {
                    Some(ahead) => now.saturating_add(nanos(ahead)),
                    None => now.saturating_sub(nanos(tokio_now.saturating_duration_since(at))),
                }
            }
            Self::Tokio(base) => nanos(at.saturating_duration_since(*base)),
        }
    }

    /// The tokio instant of `at` (this clock's nanoseconds), to sleep until;
    /// `now` is this clock's latest reading.
    fn instant_at(&self, at: u64, now: u64) -> Instant {
        match self {
            Self::Fast { .. } => Instant::now() + Duration::from_nanos(at.saturating_sub(now)),
            Self::Tokio(base) => *base + Duration::from_nanos(at),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What slows admissions beyond the two quotas; rare, so behind a lock.
#[derive(Debug, Default)]
struct Constraints {
    /// No admission before this (a provider's `retry-after`).
    paused_until: Option<u64>,
    /// What the provider last said is left of its request and token budgets
    /// until their reset.
    provider_requests: Option<Budget>,
    provider_tokens: Option<Budget>,
}

impl Constraints {
    fn any(&self) -> bool {
        self.paused_until.is_some()
            || self.provider_requests.is_some()
            || self.provider_tokens.is_some()
    }

    /// When a request of `tokens` may go, by these constraints.
    fn ready_at(&self, tokens: u32, now: u64) -> u64 {
        self.paused_until
            .unwrap_or(now)
            .max(Budget::ready_at(self.provider_requests, 1, now))
            .max(Budget::ready_at(self.provider_tokens, tokens, now))
    }

    /// Counts an admission of `tokens` at `now`, and forgets what has passed.
    fn spend(&mut self, tokens: u32, now: u64) {
        if self.paused_until.is_some_and(|paused| paused <= now) {
            self.paused_until = None;
        }
        Budget::spend(&mut self.provider_requests, 1, now);
        Budget::spend(&mut self.provider_tokens, tokens, now);
    }
}

/// A provider's remaining budget until its reset.
#[derive(Debug, Clone, Copy)]
struct Budget {
    left: u32,
    until: u64,
}

impl Budget {
    /// When `units` fit in it: now if they do (or it has reset), else at its reset.
    fn ready_at(budget: Option<Self>, units: u32, now: u64) -> u64 {
        match budget {
            Some(budget) if budget.until > now && units > budget.left => budget.until,
            _ => now,
        }
    }

    /// Takes `units` from a budget that has not reset; forgets one that has.
    fn spend(budget: &mut Option<Self>, units: u32, now: u64) {
        match budget {
            Some(active) if active.until > now => active.left = active.left.saturating_sub(units),
            _ => *budget = None,
        }
    }
}

#[derive(Clone)]
struct LimiterMetrics {
    wait: Histogram,
    admitted_requests: Counter,
    admitted_tokens: Counter,
    refunded_tokens: Counter,
    charged_tokens: Counter,
}

impl LimiterMetrics {
    fn new(name: &str) -> Self {
        let name = name.to_owned();
        Self {
            wait: histogram!("perfkit_batcher_limiter_wait_seconds", "name" => name.clone()),
            admitted_requests: counter!("perfkit_batcher_limiter_requests_total", "name" => name.clone()),
            admitted_tokens: counter!("perfkit_batcher_limiter_tokens_total", "name" => name.clone()),
            refunded_tokens: counter!("perfkit_batcher_limiter_refunded_tokens_total", "name" => name.clone()),
            charged_tokens: counter!("perfkit_batcher_limiter_charged_tokens_total", "name" => name),
        }
    }
}

/// Builds a [`RateLimiter`]: `RateLimiter::builder()…build()?`.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RateLimiterBuilder {
    requests_per_minute: Option<NonZeroU32>,
    tokens_per_minute: Option<NonZeroU32>,
    request_burst: Option<NonZeroU32>,
    token_burst: Option<NonZeroU32>,
    window: Option<Duration>,
    clock: Clock,
    name: Option<String>,
}

impl RateLimiterBuilder {
    /// At most this many requests in any 60-second window. Default: no limit.
    pub fn requests_per_minute(mut self, limit: NonZeroU32) -> Self {
        self.requests_per_minute = Some(limit);
        self
    }

    /// At most this many tokens in any 60-second window. Default: no limit.
    pub fn tokens_per_minute(mut self, limit: NonZeroU32) -> Self {
        self.tokens_per_minute = Some(limit);
        self
    }

    /// Requests that may go at once after a quiet spell. Default: a tenth of
    /// the limit (at least 1). The sustained rate is `limit − burst + 1` per
    /// minute.
    pub fn request_burst(mut self, burst: NonZeroU32) -> Self {
        self.request_burst = Some(burst);
        self
    }

    /// Tokens that may go at once after a quiet spell; also the largest
    /// single request ([`LimitError::TooLarge`] beyond it). Default: a tenth
    /// of the limit. The sustained rate is `limit − burst + 1` per minute.
    pub fn token_burst(mut self, burst: NonZeroU32) -> Self {
        self.token_burst = Some(burst);
        self
    }

    /// The window the limits are counted over. Default: 60 s, as providers
    /// state RPM and TPM; a provider with per-second limits (or a test) may
    /// use another: `requests_per_minute(10).window(1 s)` means at most 10
    /// requests in any second.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Where the limiter reads the time. Default: [`Clock::Fast`]; use
    /// [`Clock::Tokio`] in tests that run on tokio's paused clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Names the limiter in metrics (`name` label). Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builds the limiter. Metric handles are taken from the `metrics`
    /// recorder installed at this moment.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoLimit`] without any limit, [`ConfigError::BurstOverLimit`]
    /// for a burst over its limit, [`ConfigError::EmptyName`] for a blank name,
    /// [`ConfigError::Zero`] for a zero window.
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        let name = self.name.unwrap_or_else(|| "default".to_owned());
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.requests_per_minute.is_none() && self.tokens_per_minute.is_none() {
            return Err(ConfigError::NoLimit);
        }
        let window = self.window.unwrap_or(WINDOW);
        if window.is_zero() {
            return Err(ConfigError::Zero("window"));
        }
        let requests = self
            .requests_per_minute
            .map(|limit| Quota::new(limit, self.request_burst, window))
            .transpose()?;
        let tokens = self
            .tokens_per_minute
            .map(|limit| Quota::new(limit, self.token_burst, window))
            .transpose()?;
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                requests,
                tokens,
                clock: TimeBase::new(self.clock),
                tats: AtomicU128::new(join(0, 0)),
                constrained: AtomicBool::new(false),
                constraints: Mutex::new(Constraints::default()),
                waiting: AtomicUsize::new(0),
                turn: tokio::sync::Mutex::new(()),
                changed: Notify::new(),
                metrics: LimiterMetrics::new(&name),
                name: Arc::from(name),
            }),
        })
    }
}

impl RateLimiter {
    /// A builder with no limit set: set at least one.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    /// Waits until one request of `tokens` tokens fits both limits, behind
    /// every caller that came first, and reserves it. Dropping the future
    /// while it waits leaves the queue and reserves nothing.
    ///
    /// # Errors
    ///
    /// [`LimitError::TooLarge`] at once when `tokens` exceeds the token burst:
    /// such a request could never be admitted.
    pub async fn acquire(&self, tokens: u32) -> Result<Reservation<'_>, LimitError> {
        self.check_size(tokens)?;
        let shared = &*self.shared;
        // The fast path: nobody queued, and there is room now.
        if shared.waiting.load(Ordering::Acquire) == 0
            && let Some(reservation) = self.admit_if_ready(tokens, shared.clock.now())
        {
            shared.metrics.wait.record(0.0);
            return Ok(reservation);
        }
        let started = Instant::now();
        let _queued = Queued::join(&shared.waiting);
        let _turn = shared.turn.lock().await;
        loop {
            // Registered before `ready` is read, so a refund in between wakes it.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = shared.clock.now();
            let ready = self.ready_at(tokens, now);
            if ready <= now {
                if let Some(reservation) = self.admit_if_ready(tokens, now) {
                    shared.metrics.wait.record(started.elapsed().as_secs_f64());
                    return Ok(reservation);
                }
                continue;
            }
            // Woken early when a refund (or a shorter pause) moved `ready`.
            tokio::select! {
                () = tokio::time::sleep_until(shared.clock.instant_at(ready, now)) => {}
                () = changed => {}
            }
        }
    }

    /// Reserves one request of `tokens` tokens if it fits both limits now
    /// and nobody is queued; `Ok(None)` otherwise (nothing is reserved).
    /// Lock-free unless a pause or a provider budget is in force.
    ///
    /// # Errors
    ///
    /// [`LimitError::TooLarge`] when `tokens` exceeds the token burst.
    pub fn try_acquire(&self, tokens: u32) -> Result<Option<Reservation<'_>>, LimitError> {
        self.check_size(tokens)?;
        if self.shared.waiting.load(Ordering::Acquire) != 0 {
            return Ok(None);
        }
        Ok(self.admit_if_ready(tokens, self.shared.clock.now()))
    }

    /// Admits nobody before `until` (a provider's `retry-after`); a later
    /// pause than the current one replaces it, an earlier one is ignored.
    pub fn pause_until(&self, until: Instant) {
        self.pause_to(self.shared.clock.nanos_at(until));
    }

    /// Admits nobody for `delay` from now: [`pause_until`](Self::pause_until)
    /// in the limiter's own time.
    pub fn pause_for(&self, delay: Duration) {
        self.pause_to(self.shared.clock.now().saturating_add(nanos(delay)));
    }

    /// A pause until `until` (limiter nanoseconds), unless a later one is set.
    fn pause_to(&self, until: u64) {
        self.constrain(|constraints| {
            if constraints
                .paused_until
                .is_none_or(|current| current < until)
            {
                constraints.paused_until = Some(until);
            }
        });
    }

    /// Lowers the local budget to what the provider says is left
    /// (`x-ratelimit-remaining-requests` / `-tokens`, with
    /// `x-ratelimit-reset-requests` / `-tokens`): until the reported reset,
    /// at most that much more is admitted, and a request that does not fit
    /// waits for the reset (providers refill at their reset, not
    /// continuously). Without a reset time, the limiter's own budget is
    /// lowered to what is left. A later observation replaces an earlier one.
    /// More room than the limiter allows changes nothing: the configured
    /// limits still hold.
    pub fn observe_remaining(&self, remaining: ProviderRemaining) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let budget = |left: Option<u32>, reset: Option<Duration>| {
            left.zip(reset).map(|(left, reset)| Budget {
                left,
                until: now.saturating_add(nanos(reset)),
            })
        };
        let requests = budget(remaining.requests, remaining.requests_reset);
        let tokens = budget(remaining.tokens, remaining.tokens_reset);
        if requests.is_some() || tokens.is_some() {
            self.constrain(|constraints| {
                if requests.is_some() {
                    constraints.provider_requests = requests;
                }
                if tokens.is_some() {
                    constraints.provider_tokens = tokens;
                }
            });
        }
        // Without a reset time: the limiter's own budget, lowered.
        let floor = |quota: Option<Quota>, left: Option<u32>, reset: Option<Duration>| match (
            quota, left, reset,
        ) {
            (Some(quota), Some(left), None) => {
                Some(now.saturating_add(quota.cost(quota.burst.saturating_sub(left))))
            }
            _ => None,
        };
        let requests_floor = floor(
            shared.requests,
            remaining.requests,
            remaining.requests_reset,
        );
        let tokens_floor = floor(shared.tokens, remaining.tokens, remaining.tokens_reset);
        if requests_floor.is_some() || tokens_floor.is_some() {
            self.update_tats(|requests_tat, tokens_tat| {
                Some((
                    requests_floor.map_or(requests_tat, |floor| requests_tat.max(floor)),
                    tokens_floor.map_or(tokens_tat, |floor| tokens_tat.max(floor)),
                ))
            });
        }
    }

    /// The limits, as configured: `(requests per minute, tokens per minute)`.
    #[must_use]
    pub fn limits(&self) -> (Option<u32>, Option<u32>) {
        (
            self.shared.requests.map(|quota| quota.limit),
            self.shared.tokens.map(|quota| quota.limit),
        )
    }

    /// The token burst (the largest single reservation), if tokens are limited.
    #[must_use]
    pub fn token_burst(&self) -> Option<u32> {
        self.shared.tokens.map(|quota| quota.burst)
    }

    fn check_size(&self, tokens: u32) -> Result<(), LimitError> {
        match self.shared.tokens {
            Some(quota) if tokens > quota.burst => Err(LimitError::TooLarge {
                tokens,
                burst: quota.burst,
            }),
            _ => Ok(()),
        }
    }

    /// Changes the constraints under their lock, and marks them in force.
    fn constrain(&self, change: impl FnOnce(&mut Constraints)) {
        let mut constraints = self.shared.constraints();
        change(&mut constraints);
        self.shared
            .constrained
            .store(constraints.any(), Ordering::Release);
    }

    /// When a request of `tokens` may go, by both quotas and any constraint.
    fn ready_at(&self, tokens: u32, now: u64) -> u64 {
        let shared = &*self.shared;
        let (requests_tat, tokens_tat) = split(shared.tats.load(Ordering::Acquire));
        let mut ready = now;
        if let Some(quota) = shared.requests {
            ready = ready.max(quota.ready_at(requests_tat, 1));
        }
        if let Some(quota) = shared.tokens {
            ready = ready.max(quota.ready_at(tokens_tat, tokens));
        }
        if shared.constrained.load(Ordering::Acquire) {
            ready = ready.max(shared.constraints().ready_at(tokens, now));
        }
        ready
    }

    fn admit_if_ready(&self, tokens: u32, now: u64) -> Option<Reservation<'_>> {
        let shared = &*self.shared;
        if shared.constrained.load(Ordering::Acquire) {
            let mut constraints = shared.constraints();
            if constraints.ready_at(tokens, now) > now || !self.take(tokens, now) {
                return None;
            }
            constraints.spend(tokens, now);
            shared
                .constrained
                .store(constraints.any(), Ordering::Release);
        } else if !self.take(tokens, now) {
            return None;
        }
        shared.metrics.admitted_requests.increment(1);
        shared.metrics.admitted_tokens.increment(u64::from(tokens));
        Some(Reservation {
            limiter: self,
            tokens,
        })
    }

    /// Takes one request and `tokens` tokens from both quotas at once if
    /// both have room at `now`.
    fn take(&self, tokens: u32, now: u64) -> bool {
        let shared = &*self.shared;
        self.update_tats(|requests_tat, tokens_tat| {
            let mut next = (requests_tat, tokens_tat);
            if let Some(quota) = shared.requests {
                if quota.ready_at(requests_tat, 1) > now {
                    return None;
                }
                next.0 = quota.take(requests_tat, 1, now);
            }
            if let Some(quota) = shared.tokens {
                if quota.ready_at(tokens_tat, tokens) > now {
                    return None;
                }
                next.1 = quota.take(tokens_tat, tokens, now);
            }
            Some(next)
        })
    }

    /// Applies `change` to both arrival times atomically; `false` (and
    /// nothing changed) when it declines.
    fn update_tats(&self, mut change: impl FnMut(u64, u64) -> Option<(u64, u64)>) -> bool {
        let tats = &self.shared.tats;
        let mut current = tats.load(Ordering::Acquire);
        loop {
            let (requests_tat, tokens_tat) = split(current);
            let Some((requests_next, tokens_next)) = change(requests_tat, tokens_tat) else {
                return false;
            };
            match tats.compare_exchange_weak(
                current,
                join(requests_next, tokens_next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What a provider's rate-limit headers say is left, for
/// [`RateLimiter::observe_remaining`]. `None` where the provider said nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderRemaining {
    /// `x-ratelimit-remaining-requests`.
    pub requests: Option<u32>,
    /// `x-ratelimit-remaining-tokens`.
    pub tokens: Option<u32>,
    /// `x-ratelimit-reset-requests`: when the request budget is full again.
    pub requests_reset: Option<Duration>,
    /// `x-ratelimit-reset-tokens`: when the token budget is full again.
    pub tokens_reset: Option<Duration>,
}

impl ProviderRemaining {
    /// The remaining requests and tokens, without reset times.
    #[must_use]
    pub fn new(requests: Option<u32>, tokens: Option<u32>) -> Self {
        Self {
            requests,
            tokens,
            ..Self::default()
        }
    }

    /// The reset times.
    #[must_use]
    pub fn with_resets(mut self, requests: Option<Duration>, tokens: Option<Duration>) -> Self {
        self.requests_reset = requests;
        self.tokens_reset = tokens;
        self
    }
}

impl Shared {
    fn constraints(&self) -> std::sync::MutexGuard<'_, Constraints> {
        self.constraints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.shared.name)
            .field("requests", &self.shared.requests)
            .field("tokens", &self.shared.tokens)
            .finish_non_exhaustive()
    }
}

/// Counts a caller in the queue for as long as it is alive (a dropped
/// caller leaves it).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted request's tokens, as estimated. Tell it the real usage with
/// [`reconcile`](Self::reconcile); dropped without it, the estimate stands.
/// It borrows its limiter (no reference count is touched per admission).
#[must_use = "reconcile the reservation with the usage the provider reports"]
pub struct Reservation<'a> {
    limiter: &'a RateLimiter,
    tokens: u32,
}

impl Reservation<'_> {
    /// The tokens reserved.
    #[must_use]
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// Replaces the estimate with the usage the provider reported: the
    /// difference is refunded (fewer used) or charged (more used), so later
    /// admissions follow real usage.
    pub fn reconcile(self, used: u32) {
        let shared = &*self.limiter.shared;
        let Some(quota) = shared.tokens else {
            return;
        };
        let reserved = self.tokens;
        if used == reserved {
            return;
        }
        self.limiter.update_tats(|requests_tat, tokens_tat| {
            Some(if used < reserved {
                (
                    requests_tat,
                    tokens_tat.saturating_sub(quota.cost(reserved - used)),
                )
            } else {
                (
                    requests_tat,
                    tokens_tat.saturating_add(quota.cost(used - reserved)),
                )
            })
        });
        if used < reserved {
            shared
                .metrics
                .refunded_tokens
                .increment(u64::from(reserved - used));
            shared.changed.notify_waiters();
        } else {
            shared
                .metrics
                .charged_tokens
                .increment(u64::from(used - reserved));
        }
    }
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}
