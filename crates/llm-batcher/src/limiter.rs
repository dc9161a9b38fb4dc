//! A rate limiter on requests and tokens at once: GCRA on each quantity,
//! callers admitted in FIFO order, token reservations reconciled with the
//! usage a provider reports.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
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
    state: Mutex<State>,
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
    /// Time per unit at the sustained rate, rounded up (never faster).
    interval: Duration,
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
            interval: Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
        })
    }

    /// `units` of this quantity's time.
    fn cost(&self, units: u32) -> Duration {
        self.interval.saturating_mul(units)
    }

    /// When `units` may go, given the theoretical arrival time `tat`: at
    /// `tat - (burst - units) · interval` (now if that is past).
    fn ready_at(&self, tat: Instant, units: u32) -> Instant {
        let slack = self.cost(self.burst.saturating_sub(units));
        tat.checked_sub(slack).unwrap_or(tat)
    }
}

struct State {
    /// Theoretical arrival times (GCRA) of the next request and token.
    requests_tat: Instant,
    tokens_tat: Instant,
    /// No admission before this (a provider's `retry-after`).
    paused_until: Option<Instant>,
    /// What the provider last said is left of its request and token budgets
    /// until their reset.
    provider_requests: Option<Budget>,
    provider_tokens: Option<Budget>,
}

/// A provider's remaining budget until its reset.
#[derive(Debug, Clone, Copy)]
struct Budget {
    left: u32,
    until: Instant,
}

impl Budget {
    /// When `units` fit in it: now if they do (or it has reset), else at its reset.
    fn ready_at(budget: Option<Self>, units: u32, now: Instant) -> Instant {
        match budget {
            Some(budget) if budget.until > now && units > budget.left => budget.until,
            _ => now,
        }
    }

    /// Takes `units` from a budget that has not reset; forgets one that has.
    fn spend(budget: &mut Option<Self>, units: u32, now: Instant) {
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
        let now = Instant::now();
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                requests,
                tokens,
                state: Mutex::new(State {
                    requests_tat: now,
                    tokens_tat: now,
                    paused_until: None,
                    provider_requests: None,
                    provider_tokens: None,
                }),
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
    pub async fn acquire(&self, tokens: u32) -> Result<Reservation, LimitError> {
        self.check_size(tokens)?;
        let shared = &*self.shared;
        // The fast path: nobody queued, and there is room now.
        if shared.waiting.load(Ordering::Acquire) == 0
            && let Some(reservation) = self.admit_if_ready(tokens, Instant::now())
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
            let now = Instant::now();
            let ready = {
                let state = shared.state();
                self.ready_at(&state, tokens, now)
            };
            if ready <= now {
                if let Some(reservation) = self.admit_if_ready(tokens, now) {
                    shared.metrics.wait.record(started.elapsed().as_secs_f64());
                    return Ok(reservation);
                }
                continue;
            }
            // Woken early when a refund (or a shorter pause) moved `ready`.
            tokio::select! {
                () = tokio::time::sleep_until(ready) => {}
                () = changed => {}
            }
        }
    }

    /// Reserves one request of `tokens` tokens if it fits both limits now
    /// and nobody is queued; `Ok(None)` otherwise (nothing is reserved).
    ///
    /// # Errors
    ///
    /// [`LimitError::TooLarge`] when `tokens` exceeds the token burst.
    pub fn try_acquire(&self, tokens: u32) -> Result<Option<Reservation>, LimitError> {
        self.check_size(tokens)?;
        if self.shared.waiting.load(Ordering::Acquire) != 0 {
            return Ok(None);
        }
        Ok(self.admit_if_ready(tokens, Instant::now()))
    }

    /// Admits nobody before `until` (a provider's `retry-after`); a later
    /// pause than the current one replaces it, an earlier one is ignored.
    pub fn pause_until(&self, until: Instant) {
        let mut state = self.shared.state();
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
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
        let now = Instant::now();
        let mut guard = self.shared.state();
        let state = &mut *guard;
        observe(
            self.shared.requests,
            &mut state.requests_tat,
            &mut state.provider_requests,
            (remaining.requests, remaining.requests_reset),
            now,
        );
        observe(
            self.shared.tokens,
            &mut state.tokens_tat,
            &mut state.provider_tokens,
            (remaining.tokens, remaining.tokens_reset),
            now,
        );
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

    /// When a request of `tokens` may go, by both quotas and any pause.
    fn ready_at(&self, state: &State, tokens: u32, now: Instant) -> Instant {
        let mut ready = now;
        if let Some(quota) = self.shared.requests {
            ready = ready.max(quota.ready_at(state.requests_tat, 1));
        }
        if let Some(quota) = self.shared.tokens {
            ready = ready.max(quota.ready_at(state.tokens_tat, tokens));
        }
        if let Some(paused) = state.paused_until {
            ready = ready.max(paused);
        }
        ready = ready.max(Budget::ready_at(state.provider_requests, 1, now));
        ready.max(Budget::ready_at(state.provider_tokens, tokens, now))
    }

    fn admit_if_ready(&self, tokens: u32, now: Instant) -> Option<Reservation> {
        let shared = &*self.shared;
        {
            let mut state = shared.state();
            if self.ready_at(&state, tokens, now) > now {
                return None;
            }
            if let Some(quota) = shared.requests {
                state.requests_tat = state.requests_tat.max(now) + quota.cost(1);
            }
            if let Some(quota) = shared.tokens {
                state.tokens_tat = state.tokens_tat.max(now) + quota.cost(tokens);
            }
            if state.paused_until.is_some_and(|paused| paused <= now) {
                state.paused_until = None;
            }
            Budget::spend(&mut state.provider_requests, 1, now);
            Budget::spend(&mut state.provider_tokens, tokens, now);
        }
        shared.metrics.admitted_requests.increment(1);
        shared.metrics.admitted_tokens.increment(u64::from(tokens));
        Some(Reservation {
            limiter: self.clone(),
            tokens,
        })
    }
}

/// One quantity's part of [`RateLimiter::observe_remaining`]: with a reset
/// time, the provider's budget until then (providers refill at the reset,
/// not continuously); without one, the limiter's own budget lowered to
/// what is left.
fn observe(
    quota: Option<Quota>,
    tat: &mut Instant,
    budget: &mut Option<Budget>,
    (left, reset): (Option<u32>, Option<Duration>),
    now: Instant,
) {
    let Some(left) = left else { return };
    match (reset, quota) {
        (Some(reset), _) => {
            *budget = Some(Budget {
                left,
                until: now + reset,
            });
        }
        (None, Some(quota)) => lower(tat, quota, left, now),
        (None, None) => {}
    }
}

/// Moves `tat` so that at most `left` units are available now (GCRA: the
/// room at `now` is `burst − (tat − now) / interval`).
fn lower(tat: &mut Instant, quota: Quota, left: u32, now: Instant) {
    let floor = now + quota.cost(quota.burst.saturating_sub(left));
    if *tat < floor {
        *tat = floor;
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
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
#[must_use = "reconcile the reservation with the usage the provider reports"]
pub struct Reservation {
    limiter: RateLimiter,
    tokens: u32,
}

impl Reservation {
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
        if used == self.tokens {
            return;
        }
        {
            let mut state = shared.state();
            if used < self.tokens {
                let refund = quota.cost(self.tokens - used);
                state.tokens_tat = state
                    .tokens_tat
                    .checked_sub(refund)
                    .unwrap_or(state.tokens_tat);
            } else {
                state.tokens_tat += quota.cost(used - self.tokens);
            }
        }
        if used < self.tokens {
            shared
                .metrics
                .refunded_tokens
                .increment(u64::from(self.tokens - used));
            shared.changed.notify_waiters();
        } else {
            shared
                .metrics
                .charged_tokens
                .increment(u64::from(used - self.tokens));
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}
