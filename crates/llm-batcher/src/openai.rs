//! An executor for OpenAI-compatible embeddings endpoints (`POST
//! {base}/embeddings` with an array of inputs).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::executor::{BatchExecutor, ExecError, ExecFuture, Executed, estimate_tokens};
use crate::limiter::ProviderRemaining;

/// The most inputs the embeddings endpoint takes in one call; larger batches
/// are sent as several calls.
pub const MAX_INPUTS_PER_CALL: usize = 2_048;

/// Embeds texts through an `OpenAI`-compatible embeddings endpoint:
/// `OpenAI` itself, Azure's compatible route, `vLLM`, `Ollama`, `LiteLLM` and
/// the like. Each batch is one `POST {base_url}/embeddings` with the texts as
/// an array (at most [`MAX_INPUTS_PER_CALL`] per call; a larger batch is
/// split); results are matched to callers by the response's
/// `data[].index`; the reported `usage.total_tokens` reconciles the rate
/// limiter, and the `x-ratelimit-*` headers lower its budget.
///
/// Errors: `429` with `insufficient_quota` → [`ExecError::QuotaExhausted`]
/// (not retried); any other `429` → [`ExecError::RateLimited`] with the
/// delay from `retry-after-ms`, `retry-after` (seconds or an HTTP date);
/// other statuses, transport failures and unreadable bodies →
/// [`ExecError::Failed`]. The API key is sent as a bearer token marked
/// sensitive, and never appears in `Debug` or in errors.
///
/// ```no_run
/// use perfkit_llm_batcher::{Batcher, OpenAiEmbeddings};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let executor = OpenAiEmbeddings::builder("text-embedding-3-small")
///     .api_key(std::env::var("OPENAI_API_KEY")?)
///     .build()?;
/// let batcher = Batcher::builder(executor).build()?;
/// let vector = batcher.submit("hello".to_owned()).await?;
/// # let _ = vector;
/// # Ok(())
/// # }
/// ```
pub struct OpenAiEmbeddings {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    model: String,
    #[cfg(feature = "tokenizer")]
    encoding: Option<crate::Encoding>,
}

impl std::fmt::Debug for OpenAiEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbeddings")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Configures an [`OpenAiEmbeddings`]: `OpenAiEmbeddings::builder(model)…build()?`.
#[must_use]
pub struct OpenAiEmbeddingsBuilder {
    model: String,
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
    #[cfg(feature = "tokenizer")]
    encoding: Option<crate::Encoding>,
}

impl std::fmt::Debug for OpenAiEmbeddingsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbeddingsBuilder")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OpenAiEmbeddings {
    /// A builder for `model` (e.g. `"text-embedding-3-small"`).
    pub fn builder(model: impl Into<String>) -> OpenAiEmbeddingsBuilder {
        let model = model.into();
        OpenAiEmbeddingsBuilder {
            #[cfg(feature = "tokenizer")]
            encoding: crate::Encoding::for_model(&model),
            model,
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl OpenAiEmbeddingsBuilder {
    /// The API's base URL, up to the version (`…/v1`). Default:
    /// `https://api.openai.com/v1`.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The API key, sent as a bearer token. Default: none (local servers).
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// Counts each text's tokens exactly in `encoding` (feature
    /// `tokenizer`). Default: the model's own vocabulary when
    /// [`Encoding::for_model`](crate::Encoding::for_model) knows it, else
    /// the [`estimate_tokens`](crate::estimate_tokens) heuristic.
    #[cfg(feature = "tokenizer")]
    pub fn encoding(mut self, encoding: crate::Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// Bound on one HTTP call. Default: 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the executor.
    ///
    /// # Errors
    ///
    /// [`ConfigError::BaseUrl`] for a base URL that is not `http(s)://…`,
    /// [`ConfigError::Zero`] for a zero timeout, [`ConfigError::HttpClient`]
    /// when the HTTP client cannot be set up.
    pub fn build(self) -> Result<OpenAiEmbeddings, ConfigError> {
        let base = reqwest::Url::parse(&self.base_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ConfigError::BaseUrl(self.base_url.clone()))?;
        if self.timeout.is_zero() {
            return Err(ConfigError::Zero("timeout"));
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|error| ConfigError::HttpClient(error.to_string()))?;
        Ok(OpenAiEmbeddings {
            client,
            endpoint: format!("{}/embeddings", base.as_str().trim_end_matches('/')),
            api_key: self.api_key,
            model: self.model,
            #[cfg(feature = "tokenizer")]
            encoding: self.encoding,
        })
    }
}

/// Why an embeddings call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAiError {
    /// The call did not complete (connection refused, reset, timed out).
    #[error("the embeddings call did not complete: {0}")]
    Transport(String),
    /// The endpoint answered with an error status.
    #[error("the embeddings endpoint answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The provider's `error.message`, or the start of the body.
        message: String,
    },
    /// The account's quota is exhausted (`insufficient_quota`).
    #[error("the provider's quota is exhausted: {0}")]
    Quota(String),
    /// The response could not be read as embeddings for the batch.
    #[error("the embeddings response is not usable: {0}")]
    BadResponse(String),
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    input: &'a [String],
    encoding_format: &'static str,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Usage {
    total_tokens: Option<u32>,
    prompt_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
}

impl BatchExecutor for OpenAiEmbeddings {
    type Request = String;
    type Response = Vec<f32>;
    type Error = OpenAiError;

    fn model<'a>(&'a self, _text: &'a String) -> &'a str {
        &self.model
    }

    fn estimate_tokens(&self, text: &String) -> u32 {
        #[cfg(feature = "tokenizer")]
        if let Some(encoding) = self.encoding {
            return encoding.count(text);
        }
        estimate_tokens(text)
    }

    fn execute<'a>(
        &'a self,
        model: &'a str,
        batch: &'a [String],
    ) -> ExecFuture<'a, Vec<f32>, OpenAiError> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batch.len());
            let mut used: Option<u32> = None;
            let mut remaining = None;
            for chunk in batch.chunks(MAX_INPUTS_PER_CALL) {
                let (vectors, tokens, left) = self.call(model, chunk).await?;
                results.extend(vectors.into_iter().map(Ok));
                if let Some(tokens) = tokens {
                    used = Some(used.unwrap_or(0).saturating_add(tokens));
                }
                remaining = left.or(remaining);
            }
            let mut executed = Executed::new(results);
            if let Some(used) = used {
                executed = executed.with_tokens_used(used);
            }
            if let Some(remaining) = remaining {
                executed = executed.with_remaining(remaining);
            }
            Ok(executed)
        })
    }
}

type CallOutcome = (Vec<Vec<f32>>, Option<u32>, Option<ProviderRemaining>);

impl OpenAiEmbeddings {
    /// One HTTP call for at most [`MAX_INPUTS_PER_CALL`] inputs.
    async fn call(
        &self,
        model: &str,
        inputs: &[String],
    ) -> Result<CallOutcome, ExecError<OpenAiError>> {
        let mut request = self.client.post(&self.endpoint).json(&Body {
            model,
            input: inputs,
            encoding_format: "float",
        });
        if let Some(key) = &self.api_key {
            // reqwest marks the header sensitive: never printed by its Debug.
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|error| ExecError::Failed(OpenAiError::Transport(describe(&error))))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|error| ExecError::Failed(OpenAiError::Transport(describe(&error))))?;
        if !status.is_success() {
            return Err(failure(status.as_u16(), &headers, &body));
        }
        let parsed: Response = serde_json::from_slice(&body)
            .map_err(|error| ExecError::Failed(OpenAiError::BadResponse(error.to_string())))?;
        let vectors = by_index(parsed.data, inputs.len()).map_err(ExecError::Failed)?;
        let tokens = parsed
            .usage
            .and_then(|usage| usage.total_tokens.or(usage.prompt_tokens));
        Ok((vectors, tokens, remaining(&headers)))
    }
}

/// A reqwest error with what went wrong first (its message names the URL,
/// never a header).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "the body broke off"
    } else {
        "request failed"
    };
    format!("{kind}: {error}")
}

/// The embeddings in input order, each index exactly once.
fn by_index(data: Vec<Datum>, expected: usize) -> Result<Vec<Vec<f32>>, OpenAiError> {
    if data.len() != expected {
        return Err(OpenAiError::BadResponse(format!(
            "{} embeddings for {expected} inputs",
            data.len()
        )));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    for datum in data {
        match slots.get_mut(datum.index) {
            Some(slot @ None) => *slot = Some(datum.embedding),
            Some(Some(_)) => {
                return Err(OpenAiError::BadResponse(format!(
                    "index {} appears twice",
                    datum.index
                )));
            }
            None => {
                return Err(OpenAiError::BadResponse(format!(
                    "index {} is out of range for {expected} inputs",
                    datum.index
                )));
            }
        }
    }
    // Every slot is filled: `expected` distinct in-range indexes.
    Ok(slots.into_iter().flatten().collect())
}

/// Maps an error status to what the batcher should do.
fn failure(status: u16, headers: &HeaderMap, body: &[u8]) -> ExecError<OpenAiError> {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|body| body.error);
    let message = detail
        .as_ref()
        .and_then(|detail| detail.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let quota = detail.as_ref().is_some_and(|detail| {
        detail.kind.as_deref() == Some("insufficient_quota")
            || detail.code.as_deref() == Some("insufficient_quota")
    });
    if quota {
        return ExecError::QuotaExhausted(OpenAiError::Quota(message));
    }
    if status == 429 {
        return ExecError::RateLimited {
            retry_after: retry_after(headers, SystemTime::now()),
        };
    }
    ExecError::Failed(OpenAiError::Status { status, message })
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The delay a `429` asks for: `retry-after-ms` (milliseconds, as `OpenAI` sends it),
/// else `retry-after` in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|ms| ms.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1_000.0));
    }
    let value = header(headers, "retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `x-ratelimit-remaining-*` and `x-ratelimit-reset-*`, if present.
pub(crate) fn remaining(headers: &HeaderMap) -> Option<ProviderRemaining> {
    let count = |name| header(headers, name).and_then(|value| value.parse::<u32>().ok());
    let reset = |name| header(headers, name).and_then(go_duration);
    let requests = count("x-ratelimit-remaining-requests");
    let tokens = count("x-ratelimit-remaining-tokens");
    if requests.is_none() && tokens.is_none() {
        return None;
    }
    Some(ProviderRemaining::new(requests, tokens).with_resets(
        reset("x-ratelimit-reset-requests"),
        reset("x-ratelimit-reset-tokens"),
    ))
}

/// A duration as `OpenAI` writes its resets (Go's format): `20ms`, `1s`,
/// `6m0s`, `1h2m3.5s`.
pub(crate) fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0_f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let value: f64 = number.parse().ok()?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let seconds = match unit {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds;
        rest = next;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[]), now), None);
    }

    #[test]
    fn resets_read_as_go_durations() {
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("3 days"), None);
        let remaining = remaining(&headers(&[
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149990"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6ms"),
        ]))
        .unwrap();
        assert_eq!(
            remaining,
            ProviderRemaining::new(Some(59), Some(149_990))
                .with_resets(Some(Duration::from_secs(1)), Some(Duration::from_millis(6)))
        );
    }

    #[test]
    fn embeddings_are_matched_by_index_exactly_once() {
        let datum = |index, value| Datum {
            index,
            embedding: vec![value],
        };
        assert_eq!(
            by_index(vec![datum(1, 1.0), datum(0, 0.0)], 2).unwrap(),
            vec![vec![0.0], vec![1.0]]
        );
        assert!(by_index(vec![datum(0, 0.0), datum(0, 1.0)], 2).is_err());
        assert!(by_index(vec![datum(0, 0.0), datum(2, 1.0)], 2).is_err());
        assert!(by_index(vec![datum(0, 0.0)], 2).is_err());
    }
}
