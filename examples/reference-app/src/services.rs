//! What the routes stand on besides the database: the simulated price
//! upstream, the embedding models behind the batcher, the metrics recorder.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use perfkit::batcher::{
    BatchExecutor, Batcher, Error as BatchError, ExecFuture, Executed, OpenAiEmbeddings,
    RateLimiter, estimate_tokens,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{AppError, StartError};

/// Quotes for a set of coins, as the upstream gives them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prices {
    /// Coin → price in US dollars.
    pub prices: BTreeMap<String, f64>,
    /// Which upstream call produced these quotes (1 for the first).
    pub upstream_call: u64,
}

/// A slow price provider that counts its calls.
#[derive(Debug)]
pub(crate) struct Upstream {
    latency: Duration,
    calls: AtomicU64,
}

impl Upstream {
    pub(crate) fn new(latency: Duration) -> Self {
        Self {
            latency,
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Quotes `coins` after the configured latency: deterministic prices
    /// (a function of the coin's name), so responses can be compared.
    pub(crate) async fn quote(&self, coins: &[String]) -> Prices {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::time::sleep(self.latency).await;
        let prices = coins
            .iter()
            .map(|coin| {
                let cents = coin.bytes().fold(0_u64, |sum, byte| {
                    sum.wrapping_mul(31).wrapping_add(u64::from(byte))
                }) % 10_000_000;
                #[allow(clippy::cast_precision_loss)]
                let dollars = cents as f64 / 100.0;
                (coin.clone(), dollars)
            })
            .collect();
        Prices {
            prices,
            upstream_call: call,
        }
    }
}

/// A deterministic embedding model: each text's vector is a function of its
/// bytes (16 dimensions, unit length), so results can be checked and no
/// provider is needed.
#[derive(Debug)]
pub(crate) struct BuiltInModel {
    model: String,
}

/// Dimensions of the built-in model's vectors.
pub(crate) const BUILT_IN_DIMENSIONS: usize = 16;

pub(crate) fn built_in_vector(text: &str) -> Vec<f32> {
    let mut state = 0xcbf2_9ce4_8422_2325_u64;
    let mut vector = Vec::with_capacity(BUILT_IN_DIMENSIONS);
    for dimension in 0..BUILT_IN_DIMENSIONS {
        for byte in text.bytes().chain([u8::try_from(dimension).unwrap_or(0)]) {
            state ^= u64::from(byte);
            state = state.wrapping_mul(0x0100_0000_01b3);
        }
        #[allow(clippy::cast_precision_loss)]
        let component = (state >> 40) as f32 / (1_u64 << 24) as f32 - 0.5;
        vector.push(component);
    }
    let norm = vector
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    vector.iter().map(|x| x / norm).collect()
}

impl BatchExecutor for BuiltInModel {
    type Request = String;
    type Response = Vec<f32>;
    type Error = std::io::Error;

    fn model<'a>(&'a self, _text: &'a String) -> &'a str {
        &self.model
    }

    fn estimate_tokens(&self, text: &String) -> u32 {
        estimate_tokens(text)
    }

    fn execute<'a>(
        &'a self,
        _model: &'a str,
        batch: &'a [String],
    ) -> ExecFuture<'a, Vec<f32>, std::io::Error> {
        Box::pin(async move {
            let tokens = batch
                .iter()
                .map(|text| estimate_tokens(text))
                .fold(0_u32, u32::saturating_add);
            let vectors = batch.iter().map(|text| Ok(built_in_vector(text))).collect();
            Ok(Executed::new(vectors).with_tokens_used(tokens))
        })
    }
}

/// The embeddings behind `/v1/embeddings`: the built-in model or an
/// OpenAI-compatible provider, each behind a batcher and a rate limiter.
pub(crate) enum Embeddings {
    BuiltIn(Batcher<BuiltInModel>),
    OpenAi(Batcher<OpenAiEmbeddings>),
}

fn limiter() -> Result<RateLimiter, StartError> {
    RateLimiter::builder()
        .requests_per_minute(NonZeroU32::new(3_000).unwrap_or(NonZeroU32::MIN))
        .tokens_per_minute(NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN))
        .build()
        .map_err(|e| StartError::Component(e.to_string()))
}

impl Embeddings {
    pub(crate) fn new(config: &Config) -> Result<Self, StartError> {
        let component = |e: &dyn std::fmt::Display| StartError::Component(e.to_string());
        let linger = Duration::from_millis(5);
        let max_items = NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN);
        Ok(match &config.openai_base_url {
            None => Self::BuiltIn(
                Batcher::builder(BuiltInModel {
                    model: config.embedding_model.clone(),
                })
                .name("embeddings")
                .linger(linger)
                .max_items(max_items)
                .rate_limiter(limiter()?)
                .build()
                .map_err(|e| component(&e))?,
            ),
            Some(base_url) => {
                let mut executor =
                    OpenAiEmbeddings::builder(config.embedding_model.clone()).base_url(base_url);
                if let Some(key) = &config.openai_api_key {
                    executor = executor.api_key(key.clone());
                }
                Self::OpenAi(
                    Batcher::builder(executor.build().map_err(|e| component(&e))?)
                        .name("embeddings")
                        .linger(linger)
                        .max_items(max_items)
                        .rate_limiter(limiter()?)
                        .build()
                        .map_err(|e| component(&e))?,
                )
            }
        })
    }

    /// One text's vector, batched with the other callers'.
    pub(crate) async fn embed(&self, text: String) -> Result<Vec<f32>, AppError> {
        match self {
            Self::BuiltIn(batcher) => batcher.submit(text).await.map_err(refused),
            Self::OpenAi(batcher) => batcher.submit(text).await.map_err(refused),
        }
    }

    /// Sends what is queued and waits for the calls in flight.
    pub(crate) async fn shutdown(&self) {
        match self {
            Self::BuiltIn(batcher) => batcher.shutdown().await,
            Self::OpenAi(batcher) => batcher.shutdown().await,
        }
    }
}

fn refused<E: std::error::Error>(error: BatchError<E>) -> AppError {
    match error {
        BatchError::TooLarge { .. } => AppError::Unprocessable(error.to_string()),
        BatchError::Closed | BatchError::QueueFull | BatchError::RateLimited { .. } => {
            AppError::Unavailable(error.to_string())
        }
        other => AppError::Internal(format!("embedding failed: {other}")),
    }
}

/// The process's Prometheus recorder: installed by the first app built in
/// the process, shared by any other (tests run several).
pub(crate) fn prometheus() -> Result<PrometheusHandle, StartError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(StartError::Metrics)
}

/// Sums of the series of each metric in a Prometheus text rendering, by
/// name and by `label=value` pairs: what the status page shows.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    series: Vec<Series>,
}

/// One series: its metric's name, its labels, its value.
type Series = (String, Vec<(String, String)>, f64);

impl Figures {
    pub(crate) fn parse(text: &str) -> Self {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((name, labels)) => (
                    name,
                    labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|pair| {
                            let (key, value) = pair.split_once('=')?;
                            Some((key.to_owned(), value.trim_matches('"').to_owned()))
                        })
                        .collect(),
                ),
                None => (head, Vec::new()),
            };
            series.push((name.to_owned(), labels, value));
        }
        Self { series }
    }

    /// The sum of `name`'s series that carry every label in `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(series, found, _)| {
                series == name
                    && labels
                        .iter()
                        .all(|(key, value)| found.iter().any(|(k, v)| k == key && v == value))
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_vectors_are_deterministic_unit_and_distinct() {
        let a = built_in_vector("alpha");
        assert_eq!(a, built_in_vector("alpha"));
        assert_eq!(a.len(), BUILT_IN_DIMENSIONS);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(a, built_in_vector("beta"));
    }

    #[test]
    fn figures_sum_series_by_name_and_labels() {
        let text = "# TYPE x counter\nx{name=\"a\",tier=\"l1\"} 3\nx{name=\"a\",tier=\"l2\"} 4\nx{name=\"b\",tier=\"l1\"} 5\ny 1.5\n";
        let figures = Figures::parse(text);
        assert!((figures.sum("x", &[]) - 12.0).abs() < 1e-9);
        assert!((figures.sum("x", &[("tier", "l1")]) - 8.0).abs() < 1e-9);
        assert!((figures.sum("x", &[("name", "a"), ("tier", "l2")]) - 4.0).abs() < 1e-9);
        assert!((figures.sum("y", &[]) - 1.5).abs() < 1e-9);
        assert!(figures.sum("z", &[]).abs() < 1e-9);
    }
}
