//! The batcher: callers submit one request each; a background task groups
//! them by model into calls closed by count, tokens or linger, sends them
//! under the rate limiter, and hands each caller its own result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{ConfigError, Error};
use crate::executor::{BatchExecutor, ExecError};
use crate::limiter::RateLimiter;

/// Estimated tokens per call by default (lowered to a limiter's token burst).
const DEFAULT_MAX_TOKENS: u32 = 300_000;

/// What a caller's request ends with.
type Outcome<E> = Result<<E as BatchExecutor>::Response, Error<<E as BatchExecutor>::Error>>;

/// Batches requests for an LLM provider: by model, closed when a batch
/// reaches its item count, its token budget or its linger time (whichever
/// comes first), sent under an optional [`RateLimiter`], results handed
/// back one-to-one.
///
/// Cheap to clone: clones share one queue and one background task, which
/// runs until [`shutdown`](Self::shutdown) or until the last clone is
/// dropped (it then sends what is queued first).
///
/// **Guarantees:**
/// - Requests for different models never share a call.
/// - Results go to callers by position: each gets the result of its own
///   request; an item's error reaches only its caller; a whole-call error
///   reaches every caller of the batch; a result count that does not match
///   the batch fails every caller of it (never a misassignment).
/// - A caller that drops its future before its batch is sent is taken out of
///   the batch: its request is not sent and its tokens are not spent. After
///   the batch is sent, its result is discarded.
/// - A provider's `429` pauses every dispatch (through the limiter) for its
///   `retry-after`, or a capped exponential backoff with full jitter, and the
///   batch is sent again, up to [`max_attempts`](BatcherBuilder::max_attempts);
///   an exhausted quota fails at once.
///
/// ```
/// use std::time::Duration;
///
/// use perfkit_llm_batcher::{BatchExecutor, Batcher, ExecFuture, Executed, estimate_tokens};
///
/// struct Lengths;
///
/// impl BatchExecutor for Lengths {
///     type Request = String;
///     type Response = usize;
///     type Error = std::io::Error;
///
///     fn model<'a>(&'a self, _request: &'a String) -> &'a str {
///         "text-embedding-3-small"
///     }
///
///     fn estimate_tokens(&self, request: &String) -> u32 {
///         estimate_tokens(request)
///     }
///
///     fn execute<'a>(&'a self, _model: &'a str, batch: &'a [String]) -> ExecFuture<'a, usize, std::io::Error> {
///         Box::pin(async move { Ok(Executed::new(batch.iter().map(|text| Ok(text.len())).collect())) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let batcher = Batcher::builder(Lengths).linger(Duration::from_millis(5)).build()?;
/// let (a, b) = tokio::join!(batcher.submit("hello".to_owned()), batcher.submit("batch".to_owned()));
/// assert_eq!((a?, b?), (5, 5)); // one call for both
/// batcher.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Batcher<E: BatchExecutor> {
    shared: Arc<Shared<E>>,
}

impl<E: BatchExecutor> Clone for Batcher<E> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<E: BatchExecutor> {
    intake: mpsc::UnboundedSender<Message<E>>,
    /// One permit per request accepted and not yet sent.
    queue: Arc<Semaphore>,
    clock: quanta::Clock,
    closed: AtomicBool,
    executor: Arc<E>,
    max_request_tokens: u32,
    metrics: Metrics,
}

enum Message<E: BatchExecutor> {
    Item(Item<E>),
    Shutdown(oneshot::Sender<()>),
}

/// A queued request. Its place in the queue (a permit taken from
/// `Shared::queue` and forgotten) is given back when its batch's call
/// starts: one `add_permits` per batch instead of a permit handle per item.
struct Item<E: BatchExecutor> {
    request: E::Request,
    tokens: u32,
    reply: oneshot::Sender<Outcome<E>>,
    /// When it was submitted, in raw ticks of the batcher's [`quanta::Clock`].
    queued_at: u64,
}

/// Everything the background task needs.
struct Settings {
    max_items: usize,
    max_tokens: u32,
    linger: Duration,
    in_flight: Arc<Semaphore>,
    /// The queue's room, one permit per request accepted and not yet sent
    /// (shared with [`Shared::queue`]).
    queue: Arc<Semaphore>,
    /// Times the queue wait (a tick read is cheaper than tokio's clock).
    clock: quanta::Clock,
    limiter: Option<RateLimiter>,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    /// US dollars per million tokens, by model.
    prices: HashMap<String, f64>,
}

#[derive(Clone)]
struct Metrics {
    queued: Gauge,
    batches: Counter,
    batch_size: Histogram,
    batch_tokens: Histogram,
    linger: Histogram,
    queue_wait: Histogram,
    dropped: Counter,
    rate_limited: Counter,
    retries: Counter,
    failed: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let label = || ("name", name.to_owned());
        Self {
            queued: gauge!("perfkit_batcher_queued", &[label()]),
            batches: counter!("perfkit_batcher_batches_total", &[label()]),
            batch_size: histogram!("perfkit_batcher_batch_size", &[label()]),
            batch_tokens: histogram!("perfkit_batcher_batch_tokens", &[label()]),
            linger: histogram!("perfkit_batcher_linger_seconds", &[label()]),
            queue_wait: histogram!("perfkit_batcher_queue_wait_seconds", &[label()]),
            dropped: counter!("perfkit_batcher_dropped_total", &[label()]),
            rate_limited: counter!("perfkit_batcher_rate_limited_total", &[label()]),
            retries: counter!("perfkit_batcher_retries_total", &[label()]),
            failed: counter!("perfkit_batcher_failed_batches_total", &[label()]),
        }
    }
}

/// Configures a [`Batcher`]: `Batcher::builder(executor)…build()?`.
#[must_use]
pub struct BatcherBuilder<E: BatchExecutor> {
    executor: E,
    max_items: usize,
    /// `None`: the default, 300,000 or the limiter's token burst if lower.
    max_tokens: Option<u32>,
    linger: Duration,
    max_in_flight: usize,
    queue_capacity: usize,
    limiter: Option<RateLimiter>,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    prices: HashMap<String, f64>,
    name: String,
}

impl<E: BatchExecutor> BatcherBuilder<E> {
    /// Requests per call at most. Default: 2,048 (what the `OpenAI` embeddings
    /// endpoint takes in one array).
    pub fn max_items(mut self, items: NonZeroUsize) -> Self {
        self.max_items = items.get();
        self
    }

    /// Estimated tokens per call at most; a single request over it is
    /// refused ([`Error::TooLarge`]). Default: 300,000, or the rate
    /// limiter's token burst if that is lower (a larger batch could never
    /// be admitted).
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// How long a batch waits for more requests after its first one.
    /// Default: 10 ms.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Calls in flight at most. Default: 4.
    pub fn max_in_flight(mut self, calls: NonZeroUsize) -> Self {
        self.max_in_flight = calls.get();
        self
    }

    /// Requests accepted and not yet sent at most: [`Batcher::submit`] waits
    /// for room, [`Batcher::try_submit`] fails with [`Error::QueueFull`].
    /// Default: 10,000.
    pub fn queue_capacity(mut self, requests: NonZeroUsize) -> Self {
        self.queue_capacity = requests.get();
        self
    }

    /// Sends every call under `limiter` (one request and the batch's
    /// estimated tokens per call), reconciled with the usage the executor
    /// reports. Default: none.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Sends of one batch at most, the first included, when the provider
    /// answers `429`. Default: 5.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The backoff after a `429` without `retry-after`: a random delay up to
    /// `base · 2^(attempt − 1)`, at most `cap` (full jitter). Default: 500 ms
    /// and 30 s.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// The price of `model`'s tokens, in US dollars per million: each call
    /// adds its cost (from the usage the executor reports, else the
    /// estimate) to `perfkit_batcher_cost_microdollars_total{model}`.
    /// Default: no prices, no cost metric.
    pub fn price_per_million_tokens(mut self, model: impl Into<String>, usd: f64) -> Self {
        self.prices.insert(model.into(), usd);
        self
    }

    /// Names the batcher in metrics (`name` label) and spans
    /// (`batcher.name`). Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the batcher and starts its background task on the current
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a blank name, zero tokens, attempts or linger, a
    /// batch token budget over the rate limiter's token burst (such a batch
    /// could never be sent), or no runtime to start the task on.
    pub fn build(self) -> Result<Batcher<E>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        let burst = self.limiter.as_ref().and_then(RateLimiter::token_burst);
        let max_tokens = match (self.max_tokens, burst) {
            (Some(0), _) => return Err(ConfigError::Zero("max_tokens")),
            (Some(max_tokens), Some(burst)) if burst < max_tokens => {
                return Err(ConfigError::BatchOverBurst { max_tokens, burst });
            }
            (Some(max_tokens), _) => max_tokens,
            (None, burst) => {
                burst.map_or(DEFAULT_MAX_TOKENS, |burst| burst.min(DEFAULT_MAX_TOKENS))
            }
        };
        if self.max_attempts == 0 {
            return Err(ConfigError::Zero("max_attempts"));
        }
        if let Some((model, _)) = self
            .prices
            .iter()
            .find(|(_, usd)| !(usd.is_finite() && **usd >= 0.0))
        {
            return Err(ConfigError::Price(model.clone()));
        }
        if self.linger.is_zero() {
            return Err(ConfigError::Zero("linger"));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let metrics = Metrics::new(&self.name);
        let (intake, messages) = mpsc::unbounded_channel();
        let executor = Arc::new(self.executor);
        let queue = Arc::new(Semaphore::new(self.queue_capacity));
        let clock = quanta::Clock::new();
        let settings = Settings {
            max_items: self.max_items,
            max_tokens,
            linger: self.linger,
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            queue: Arc::clone(&queue),
            clock: clock.clone(),
            limiter: self.limiter,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            prices: self.prices,
        };
        let dispatcher = Dispatcher {
            executor: Arc::clone(&executor),
            open: Vec::new(),
            calls: Calls {
                executor: Arc::clone(&executor),
                settings: Arc::new(settings),
                metrics: metrics.clone(),
                name: Arc::from(self.name.as_str()),
                in_flight: JoinSet::new(),
            },
        };
        runtime.spawn(dispatcher.run(messages));
        Ok(Batcher {
            shared: Arc::new(Shared {
                intake,
                queue,
                clock,
                closed: AtomicBool::new(false),
                executor,
                max_request_tokens: max_tokens,
                metrics,
            }),
        })
    }
}

impl<E: BatchExecutor> Batcher<E> {
    /// A builder around `executor`, with the defaults each setter names.
    pub fn builder(executor: E) -> BatcherBuilder<E> {
        BatcherBuilder {
            executor,
            max_items: 2_048,
            max_tokens: None,
            linger: Duration::from_millis(10),
            max_in_flight: 4,
            queue_capacity: 10_000,
            limiter: None,
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            prices: HashMap::new(),
            name: "default".to_owned(),
        }
    }

    /// Sends `request` in the next batch of its model and waits for its
    /// result, waiting first for room in the queue if it is full. Dropping
    /// the future before the batch is sent takes the request out of it.
    ///
    /// # Errors
    ///
    /// [`Error`]: the request's own failure, its batch's, or a refusal
    /// (too large, shut down).
    pub async fn submit(&self, request: E::Request) -> Outcome<E> {
        let tokens = self.check(&request)?;
        self.shared
            .queue
            .acquire()
            .await
            .map_err(|_| Error::Closed)?
            .forget();
        self.enqueue(request, tokens)?.await
    }

    /// As [`submit`](Self::submit), but fails at once with
    /// [`Error::QueueFull`] when the queue is full. The returned future
    /// resolves to the result; dropping it before the batch is sent takes
    /// the request out.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`], [`Error::TooLarge`], [`Error::Closed`].
    pub fn try_submit(&self, request: E::Request) -> Result<Pending<E>, Error<E::Error>> {
        let tokens = self.check(&request)?;
        self.shared
            .queue
            .try_acquire()
            .map_err(|_| Error::QueueFull)?
            .forget();
        self.enqueue(request, tokens)
    }

    /// Stops taking requests ([`Error::Closed`] from then on), sends every
    /// queued one, and waits until every batch in flight has finished.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let (done, finished) = oneshot::channel();
        if self.shared.intake.send(Message::Shutdown(done)).is_ok() {
            let _ = finished.await;
        }
    }

    fn check(&self, request: &E::Request) -> Result<u32, Error<E::Error>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let tokens = self.shared.executor.estimate_tokens(request);
        if tokens > self.shared.max_request_tokens {
            return Err(Error::TooLarge {
                tokens,
                max: self.shared.max_request_tokens,
            });
        }
        Ok(tokens)
    }

    /// Queues a request whose queue permit was taken (and forgotten).
    fn enqueue(&self, request: E::Request, tokens: u32) -> Result<Pending<E>, Error<E::Error>> {
        let (reply, receiver) = oneshot::channel();
        let item = Item {
            request,
            tokens,
            reply,
            queued_at: self.shared.clock.raw(),
        };
        if self.shared.intake.send(Message::Item(item)).is_err() {
            self.shared.queue.add_permits(1);
            return Err(Error::Closed);
        }
        self.shared.metrics.queued.increment(1.0);
        Ok(Pending { receiver })
    }
}

impl<E: BatchExecutor> std::fmt::Debug for Batcher<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .field("queue_room", &self.shared.queue.available_permits())
            .finish_non_exhaustive()
    }
}

/// A submitted request's result, from [`Batcher::try_submit`]. Dropping it
/// before the batch is sent takes the request out of the batch.
#[must_use = "the request is taken out of its batch when this is dropped"]
pub struct Pending<E: BatchExecutor> {
    receiver: oneshot::Receiver<Outcome<E>>,
}

impl<E: BatchExecutor> Future for Pending<E> {
    type Output = Outcome<E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|received| received.unwrap_or(Err(Error::Closed)))
    }
}

impl<E: BatchExecutor> std::fmt::Debug for Pending<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// A batch being filled.
struct Open<E: BatchExecutor> {
    model: String,
    items: Vec<Item<E>>,
    tokens: u32,
    opened: Instant,
    deadline: Instant,
}

/// Messages handled in one turn of the dispatcher before it looks at its
/// timers and finished calls again.
const MESSAGES_PER_TURN: usize = 1_024;

/// The background task: fills batches, closes them, starts their calls.
struct Dispatcher<E: BatchExecutor> {
    /// Reads each request's model (a field apart from `calls`, so the model
    /// can be borrowed while a call is started).
    executor: Arc<E>,
    /// The batches being filled, one per model; found by comparing model
    /// names (a service sends to a few models at a time: no hashing, and no
    /// allocation per request).
    open: Vec<Open<E>>,
    calls: Calls<E>,
}

/// Starts the calls of closed batches.
struct Calls<E: BatchExecutor> {
    executor: Arc<E>,
    settings: Arc<Settings>,
    metrics: Metrics,
    name: Arc<str>,
    in_flight: JoinSet<()>,
}

impl<E: BatchExecutor> Calls<E> {
    /// Starts `batch`'s call.
    fn start(&mut self, batch: Open<E>) {
        self.metrics
            .linger
            .record(batch.opened.elapsed().as_secs_f64());
        let call = Call {
            executor: Arc::clone(&self.executor),
            settings: Arc::clone(&self.settings),
            metrics: self.metrics.clone(),
            name: Arc::clone(&self.name),
            model: batch.model,
        };
        self.in_flight.spawn(call.run(batch.items));
    }
}

impl<E: BatchExecutor> Dispatcher<E> {
    async fn run(mut self, mut messages: mpsc::UnboundedReceiver<Message<E>>) {
        // One timer, moved only when the earliest deadline changes (not
        // registered again for every request).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            let deadline = self.open.iter().map(|batch| batch.deadline).min();
            if deadline != armed {
                if let Some(deadline) = deadline {
                    timer.as_mut().reset(deadline);
                }
                armed = deadline;
            }
            tokio::select! {
                message = messages.recv() => {
                    let mut next = message;
                    let mut handled = 0;
                    loop {
                        match next {
                            Some(Message::Item(item)) => self.add(item),
                            Some(Message::Shutdown(done)) => {
                                self.drain().await;
                                let _ = done.send(());
                            }
                            // Every handle is gone: send what is queued, then stop.
                            None => {
                                self.drain().await;
                                return;
                            }
                        }
                        handled += 1;
                        if handled == MESSAGES_PER_TURN {
                            break;
                        }
                        // What else has arrived, without a trip through `select!`.
                        next = match messages.try_recv() {
                            Ok(message) => Some(message),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.close_expired();
                }
                Some(_) = self.calls.in_flight.join_next(), if !self.calls.in_flight.is_empty() => {}
            }
        }
    }

    fn add(&mut self, item: Item<E>) {
        let settings = &*self.calls.settings;
        let (max_items, max_tokens, linger) =
            (settings.max_items, settings.max_tokens, settings.linger);
        let model = self.executor.model(&item.request);
        let mut index = self.open.iter().position(|batch| batch.model == model);
        if let Some(full) = index.filter(|&i| {
            self.open
                .get(i)
                .is_some_and(|batch| batch.tokens.saturating_add(item.tokens) > max_tokens)
        }) {
            let batch = self.open.swap_remove(full);
            self.calls.start(batch);
            index = None;
        }
        let index = index.unwrap_or_else(|| {
            let now = Instant::now();
            self.open.push(Open {
                model: model.to_owned(),
                items: Vec::new(),
                tokens: 0,
                opened: now,
                deadline: now + linger,
            });
            self.open.len() - 1
        });
        let Some(batch) = self.open.get_mut(index) else {
            return;
        };
        batch.tokens = batch.tokens.saturating_add(item.tokens);
        batch.items.push(item);
        if batch.items.len() >= max_items || batch.tokens >= max_tokens {
            let batch = self.open.swap_remove(index);
            self.calls.start(batch);
        }
    }

    fn close_expired(&mut self) {
        let now = Instant::now();
        let mut index = 0;
        while index < self.open.len() {
            if self
                .open
                .get(index)
                .is_some_and(|batch| batch.deadline <= now)
            {
                let batch = self.open.swap_remove(index);
                self.calls.start(batch);
            } else {
                index += 1;
            }
        }
    }

    /// Closes every open batch and waits for every call.
    async fn drain(&mut self) {
        for batch in std::mem::take(&mut self.open) {
            self.calls.start(batch);
        }
        while self.calls.in_flight.join_next().await.is_some() {}
    }
}

/// One batch's call, with its retries.
struct Call<E: BatchExecutor> {
    executor: Arc<E>,
    settings: Arc<Settings>,
    metrics: Metrics,
    name: Arc<str>,
    model: String,
}

impl<E: BatchExecutor> Call<E> {
    async fn run(self, items: Vec<Item<E>>) {
        let calling = Arc::clone(&self.settings.in_flight).acquire_owned().await;
        // The requests leave the queue: their places are given back.
        self.settings.queue.add_permits(items.len());
        let Ok(_calling) = calling else {
            return;
        };
        let mut batch = Batch::from(items, &self.metrics);
        let mut attempt = 1;
        loop {
            if batch.is_empty() {
                return;
            }
            let reservation = match &self.settings.limiter {
                Some(limiter) => match limiter.acquire(batch.tokens()).await {
                    Ok(reservation) => Some(reservation),
                    Err(error) => {
                        batch.fail_all(|| Error::Limit(error.clone()));
                        return;
                    }
                },
                None => None,
            };
            // Callers who left while the batch waited are not sent.
            batch.drop_departed(&self.metrics);
            if batch.is_empty() {
                if let Some(reservation) = reservation {
                    reservation.reconcile(0);
                }
                return;
            }
            let estimate = batch.tokens();
            let clock = &self.settings.clock;
            let queue_wait = Duration::from_nanos(clock.delta_as_nanos(batch.oldest, clock.raw()));
            self.metrics.queue_wait.record(queue_wait.as_secs_f64());
            let span = tracing::debug_span!(
                "batcher.dispatch",
                batcher.name = &*self.name,
                batcher.model = %self.model,
                batcher.size = batch.len(),
                batcher.tokens = estimate,
                batcher.attempt = attempt,
                batcher.queue_wait_ms = u64::try_from(queue_wait.as_millis()).unwrap_or(u64::MAX),
            );
            self.metrics.batches.increment(1);
            #[allow(clippy::cast_precision_loss)]
            self.metrics.batch_size.record(batch.len() as f64);
            self.metrics.batch_tokens.record(f64::from(estimate));
            let outcome = self
                .executor
                .execute(&self.model, &batch.requests)
                .instrument(span)
                .await;
            match outcome {
                Ok(executed) => {
                    if let Some(reservation) = reservation {
                        reservation.reconcile(executed.tokens_used.unwrap_or(estimate));
                    }
                    if let (Some(limiter), Some(remaining)) =
                        (&self.settings.limiter, executed.remaining)
                    {
                        limiter.observe_remaining(remaining);
                    }
                    self.account(batch.len(), executed.tokens_used.unwrap_or(estimate));
                    batch.deliver(executed.results, &self.metrics);
                    return;
                }
                Err(ExecError::RateLimited { retry_after }) => {
                    self.metrics.rate_limited.increment(1);
                    // The reservation is not refunded: the provider may count a refused call.
                    if attempt >= self.settings.max_attempts {
                        tracing::warn!(
                            batcher.name = &*self.name,
                            attempts = attempt,
                            "still rate limited after every attempt; the batch fails"
                        );
                        self.metrics.failed.increment(1);
                        batch.fail_all(|| Error::RateLimited { attempts: attempt });
                        return;
                    }
                    let delay = retry_after.unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(
                        batcher.name = &*self.name,
                        ?delay,
                        attempt,
                        "rate limited by the provider; pausing dispatch"
                    );
                    match &self.settings.limiter {
                        // Every batch waits, not only this one.
                        Some(limiter) => limiter.pause_for(delay),
                        None => tokio::time::sleep(delay).await,
                    }
                    self.metrics.retries.increment(1);
                    attempt += 1;
                }
                Err(ExecError::QuotaExhausted(error)) => {
                    tracing::error!(batcher.name = &*self.name, %error, "the provider's quota is exhausted; the batch fails");
                    self.metrics.failed.increment(1);
                    let error = Arc::new(error);
                    batch.fail_all(|| Error::QuotaExhausted(Arc::clone(&error)));
                    return;
                }
                Err(ExecError::Failed(error)) => {
                    tracing::warn!(batcher.name = &*self.name, %error, "the batch's call failed");
                    self.metrics.failed.increment(1);
                    let error = Arc::new(error);
                    batch.fail_all(|| Error::Failed(Arc::clone(&error)));
                    return;
                }
            }
        }
    }

    /// Usage per model: requests and tokens, and their cost where priced.
    fn account(&self, requests: usize, tokens: u32) {
        let labels = [
            ("name", self.name.to_string()),
            ("model", self.model.clone()),
        ];
        counter!("perfkit_batcher_model_requests_total", &labels)
            .increment(u64::try_from(requests).unwrap_or(u64::MAX));
        counter!("perfkit_batcher_model_tokens_total", &labels).increment(u64::from(tokens));
        if let Some(usd) = self.settings.prices.get(&self.model) {
            // Dollars per million tokens are micro-dollars per token.
            let microdollars = (usd * f64::from(tokens)).round();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            counter!("perfkit_batcher_cost_microdollars_total", &labels)
                .increment(microdollars as u64);
        }
    }

    /// Full jitter: uniform in `0..=min(cap, base · 2^(attempt − 1))`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .settings
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(self.settings.backoff_cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(random() % nanos.saturating_add(1))
    }
}

/// A random `u64`, from the standard library's per-process random hasher
/// keys and a counter (no dependency; jitter needs no cryptography).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A batch being sent: the requests side by side (the executor takes a
/// slice) and, at the same positions, their callers.
struct Batch<E: BatchExecutor> {
    requests: Vec<E::Request>,
    callers: Vec<(u32, oneshot::Sender<Outcome<E>>)>,
    /// When its oldest request was submitted (raw clock ticks).
    oldest: u64,
}

impl<E: BatchExecutor> Batch<E> {
    fn from(items: Vec<Item<E>>, metrics: &Metrics) -> Self {
        let mut batch = Self {
            requests: Vec::with_capacity(items.len()),
            callers: Vec::with_capacity(items.len()),
            oldest: items.iter().map(|item| item.queued_at).min().unwrap_or(0),
        };
        #[allow(clippy::cast_precision_loss)]
        metrics.queued.decrement(items.len() as f64);
        for item in items {
            batch.requests.push(item.request);
            batch.callers.push((item.tokens, item.reply));
        }
        batch.drop_departed(metrics);
        batch
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    fn tokens(&self) -> u32 {
        self.callers
            .iter()
            .fold(0_u32, |sum, (tokens, _)| sum.saturating_add(*tokens))
    }

    /// Takes out the requests whose callers have gone.
    fn drop_departed(&mut self, metrics: &Metrics) {
        let before = self.requests.len();
        let mut index = 0;
        while index < self.callers.len() {
            if self
                .callers
                .get(index)
                .is_some_and(|(_, reply)| reply.is_closed())
            {
                self.callers.swap_remove(index);
                self.requests.swap_remove(index);
            } else {
                index += 1;
            }
        }
        let dropped = before - self.requests.len();
        if dropped > 0 {
            metrics.dropped.increment(dropped as u64);
        }
    }

    /// Hands each caller the result at its position; a count that does not
    /// match fails them all.
    fn deliver(self, results: Vec<Result<E::Response, E::Error>>, metrics: &Metrics) {
        let expected = self.callers.len();
        if results.len() != expected {
            let got = results.len();
            tracing::error!(
                expected,
                got,
                "the executor returned another number of results than requests; every caller of the batch fails"
            );
            metrics.failed.increment(1);
            self.fail_all(|| Error::CountMismatch { expected, got });
            return;
        }
        for ((_, reply), result) in self.callers.into_iter().zip(results) {
            // A caller that left after the call started: discarded.
            let _ = reply.send(result.map_err(Error::Item));
        }
    }

    fn fail_all(self, error: impl Fn() -> Error<E::Error>) {
        for (_, reply) in self.callers {
            let _ = reply.send(Err(error()));
        }
    }
}
