//! The routes and their handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use perfkit::cache::{Error as CacheError, LoadOptions};
use perfkit::dedup::DedupLayer;
use perfkit::idempotency::StoreKey;
use perfkit::pool::PoolSource;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shared;
use crate::db::{Agent, Payment};
use crate::error::AppError;
use crate::services::Prices;

type AppState = Arc<Shared>;

pub(crate) fn router(shared: AppState) -> Router {
    let max_body = shared.config.max_body_bytes;
    if shared.config.bare {
        return common(
            Router::new()
                .route("/payments", post(bare_create_payment).get(list_payments))
                .layer(middleware::from_fn(authenticate))
                .route("/prices", get(bare_prices))
                .route("/agents/{id}", get(bare_get_agent).put(bare_put_agent)),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared);
    }
    let payments = Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .layer(shared.idempotency.clone())
        // Before the idempotency layer: its scope is the verified account.
        .layer(middleware::from_fn(authenticate));
    let prices = Router::new().route(
        "/prices",
        get(prices).route_layer(
            DedupLayer::builder()
                .name("prices")
                .build()
                .unwrap_or_else(|_| DedupLayer::new()),
        ),
    );
    common(
        Router::new()
            .merge(payments)
            .merge(prices)
            .route("/agents/{id}", get(get_agent).put(put_agent)),
    )
    .layer(DefaultBodyLimit::max(max_body))
    .with_state(shared)
}

/// The routes that are the same with and without the perfkit layers.
fn common(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/debug/slow-queries", get(slow_queries))
        .route("/", get(status))
        .fallback(not_found)
}

/// The account a request is made for: `Authorization: Bearer <account>`,
/// 1 to 64 letters, digits, `-` or `_`.
pub(crate) fn account(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    let valid = scheme.eq_ignore_ascii_case("bearer")
        && (1..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(token)
}

async fn authenticate(request: Request, next: Next) -> Response {
    if account(request.headers()).is_none() {
        return AppError::Unauthorized(
            "send Authorization: Bearer <account> (1 to 64 letters, digits, - or _)".to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    amount_cents: i64,
    currency: String,
}

async fn create_payment(
    State(shared): State<AppState>,
    Extension(key): Extension<StoreKey>,
    headers: HeaderMap,
    body: Result<Json<NewPayment>, JsonRejection>,
) -> Result<(StatusCode, Json<Payment>), AppError> {
    insert_payment(&shared, &headers, Ok(key.key()), body).await
}

/// `POST /payments` without the idempotency layer: the key is read from the
/// header and made unique by the database alone (no replay of the response,
/// no 409 while the first request runs).
async fn bare_create_payment(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewPayment>, JsonRejection>,
) -> Result<(StatusCode, Json<Payment>), AppError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|key| key.to_str().ok())
        .filter(|key| (1..=255).contains(&key.len()))
        .ok_or_else(|| AppError::BadRequest("send an Idempotency-Key".to_owned()));
    insert_payment(&shared, &headers, key, body).await
}

/// The caller's account, or a 401.
fn caller(headers: &HeaderMap) -> Result<&str, AppError> {
    account(headers).ok_or_else(|| AppError::Unauthorized("no account".to_owned()))
}

/// Validates a new payment and records it under `(key, account)` (the
/// body's errors first, then the caller's, then the key's).
async fn insert_payment(
    shared: &Shared,
    headers: &HeaderMap,
    key: Result<&str, AppError>,
    body: Result<Json<NewPayment>, JsonRejection>,
) -> Result<(StatusCode, Json<Payment>), AppError> {
    let Json(payment) = body?;
    let account = caller(headers)?;
    let key = key?;
    if !(1..=100_000_000).contains(&payment.amount_cents) {
        return Err(AppError::Unprocessable(
            "amount_cents must be between 1 and 100000000".to_owned(),
        ));
    }
    if payment.currency.len() != 3 || !payment.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AppError::Unprocessable(
            "currency must be an ISO 4217 code such as EUR".to_owned(),
        ));
    }
    let created = shared
        .db
        .create_payment(account, key, payment.amount_cents, &payment.currency)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /agents/{id}` from the database every time.
async fn bare_get_agent(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Agent>, AppError> {
    let id = agent_id(&id)?;
    let agent = shared
        .db
        .agent(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no agent {id}")))?;
    Ok(Json(agent))
}

async fn bare_put_agent(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<AgentUpdate>, JsonRejection>,
) -> Result<Json<Agent>, AppError> {
    Ok(Json(update_agent(&shared, &id, body).await?))
}

/// Validates an update and writes it to the row.
async fn update_agent(
    shared: &Shared,
    id: &str,
    body: Result<Json<AgentUpdate>, JsonRejection>,
) -> Result<Agent, AppError> {
    let id = agent_id(id)?;
    let Json(update) = body?;
    shared
        .db
        .update_agent(id, update.name()?, update.status()?)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no agent {id}")))
}

/// `GET /prices` straight from the upstream.
async fn bare_prices(
    State(shared): State<AppState>,
    query: Result<Query<PricesQuery>, QueryRejection>,
) -> Result<Json<Prices>, AppError> {
    let Query(query) = query?;
    let coins = coins(&query.coins)?;
    Ok(Json(shared.upstream.quote(&coins).await))
}

async fn list_payments(
    State(shared): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let account = caller(&headers)?;
    let (payments, count, total_cents) = shared.db.payments(account, 20).await?;
    Ok(Json(json!({
        "account": account,
        "count": count,
        "total_cents": total_cents,
        "latest": payments,
    })))
}

fn agent_id(id: &str) -> Result<i64, AppError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::BadRequest(format!("agent ids are positive integers, not {id:?}")))
}

fn cache_failure(error: CacheError) -> AppError {
    match error {
        CacheError::Load(load) => AppError::Unavailable(format!("loading failed: {load}")),
        other => AppError::Unavailable(other.to_string()),
    }
}

async fn get_agent(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Agent>, AppError> {
    let id = agent_id(&id)?;
    let db = shared.db.clone();
    let agent = shared
        .agents
        .get_or_load_optional(
            &format!("agent:{id}"),
            move || async move { db.agent(id).await },
        )
        .await
        .map_err(cache_failure)?
        .ok_or_else(|| AppError::NotFound(format!("no agent {id}")))?;
    Ok(Json(Agent::clone(&agent)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentUpdate {
    name: String,
    status: String,
}

impl AgentUpdate {
    fn name(&self) -> Result<&str, AppError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(AppError::Unprocessable(
                "name must have 1 to 100 characters".to_owned(),
            ));
        }
        Ok(name)
    }

    fn status(&self) -> Result<&str, AppError> {
        match self.status.as_str() {
            status @ ("active" | "retired") => Ok(status),
            _ => Err(AppError::Unprocessable(
                "status must be active or retired".to_owned(),
            )),
        }
    }
}

async fn put_agent(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<AgentUpdate>, JsonRejection>,
) -> Result<Json<Agent>, AppError> {
    let agent = update_agent(&shared, &id, body).await?;
    // Every tier here, and the first tier of every other instance.
    shared
        .agents
        .invalidate(&format!("agent:{}", agent.id))
        .await;
    Ok(Json(agent))
}

#[derive(Debug, Deserialize)]
struct PricesQuery {
    coins: String,
}

/// `a,b,c` → sorted, deduplicated, lower-case coin names.
fn coins(list: &str) -> Result<Vec<String>, AppError> {
    let mut coins: Vec<String> = list
        .split(',')
        .map(|coin| coin.trim().to_ascii_lowercase())
        .filter(|coin| !coin.is_empty())
        .collect();
    coins.sort();
    coins.dedup();
    if coins.is_empty() || coins.len() > 20 {
        return Err(AppError::BadRequest(
            "coins: 1 to 20 names, comma-separated".to_owned(),
        ));
    }
    if let Some(bad) = coins.iter().find(|coin| {
        coin.len() > 32 || !coin.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        return Err(AppError::BadRequest(format!(
            "coin names are letters, digits and -, up to 32: {bad:?}"
        )));
    }
    Ok(coins)
}

async fn prices(
    State(shared): State<AppState>,
    query: Result<Query<PricesQuery>, QueryRejection>,
) -> Result<Json<Prices>, AppError> {
    let Query(query) = query?;
    let coins = coins(&query.coins)?;
    let key = format!("prices:{}", coins.join(","));
    let upstream = Arc::clone(&shared);
    let prices = shared
        .prices
        .get_or_load_with(
            &key,
            LoadOptions::default().timeout(Duration::from_secs(10)),
            move || async move { Ok::<_, AppError>(upstream.upstream.quote(&coins).await) },
        )
        .await
        .map_err(cache_failure)?;
    Ok(Json(Prices::clone(&prices)))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    input: Input,
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn embeddings(
    State(shared): State<AppState>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(request) = body?;
    if let Some(format) = request.encoding_format.as_deref()
        && format != "float"
    {
        return Err(AppError::Unprocessable(
            "encoding_format: only float is served".to_owned(),
        ));
    }
    let model = shared.config.embedding_model.clone();
    if let Some(asked) = request.model.as_deref()
        && asked != model
    {
        return Err(AppError::Unprocessable(format!(
            "model: this server serves {model}"
        )));
    }
    let inputs = match request.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > 256 {
        return Err(AppError::Unprocessable("input: 1 to 256 texts".to_owned()));
    }
    if inputs
        .iter()
        .any(|text| text.is_empty() || text.len() > 8_192)
    {
        return Err(AppError::Unprocessable(
            "input: each text has 1 to 8192 bytes".to_owned(),
        ));
    }
    let tokens: u32 = inputs
        .iter()
        .map(|text| perfkit::batcher::estimate_tokens(text))
        .fold(0, u32::saturating_add);
    // Every input is queued at once: they share batches with each other and
    // with other callers.
    let mut tasks = tokio::task::JoinSet::new();
    for (index, text) in inputs.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { (index, shared.embeddings.embed(text).await) });
    }
    let mut data = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, vector) = joined.map_err(|e| AppError::Internal(e.to_string()))?;
        data.push(json!({"object": "embedding", "index": index, "embedding": vector?}));
    }
    data.sort_by_key(|item| item["index"].as_u64());
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

async fn metrics(State(shared): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

async fn health(State(shared): State<AppState>) -> Response {
    let database_up = shared.db.ping(Duration::from_secs(2)).await;
    let stats = shared.agents.stats();
    let redis = match &shared.redis {
        Some(connection) => {
            let mut connection = connection.clone();
            let command = redis::cmd("PING");
            let ping = command.query_async::<String>(&mut connection);
            let answered = matches!(
                tokio::time::timeout(Duration::from_secs(1), ping).await,
                Ok(Ok(_))
            );
            // This instance's L2 breaker and bus subscription.
            let breaker_open = stats.tiers.iter().any(|tier| tier.breaker_open);
            let bus_up = stats.bus_up.unwrap_or(false);
            Some(json!({
                "up": answered && bus_up && !breaker_open,
                "answers_ping": answered,
                "cache_breaker_open": breaker_open,
                "bus_up": bus_up,
                "bus_reconnects": stats.bus_reconnects,
                "l1_flushes": stats.l1_flushes,
            }))
        }
        None => None,
    };
    let redis_up = redis
        .as_ref()
        .is_none_or(|redis| redis["up"].as_bool().unwrap_or(false));
    let up = database_up && redis_up;
    let body = json!({
        "status": if up { "ok" } else { "unavailable" },
        "database": {
            "backend": format!("{:?}", shared.db.backend).to_lowercase(),
            "up": database_up,
            "pool": shared.db.pool.snapshot(),
        },
        "redis": redis,
        "cache": {
            "agents": {
                "tiers": stats.tiers.iter().map(|tier| json!({
                    "name": tier.name, "hit_ratio": tier.hit_ratio(), "hits": tier.hits,
                    "misses": tier.misses, "errors": tier.errors,
                })).collect::<Vec<_>>(),
                "loads": stats.loads,
                "invalidations_sent": stats.invalidations_sent,
                "invalidations_received": stats.invalidations_received,
                "l1_flushes": stats.l1_flushes,
            },
        },
        "monitor": {"watched": shared.monitor.watched()},
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn slow_queries(State(shared): State<AppState>) -> Json<Value> {
    let report: Vec<Value> = shared
        .db
        .auditor
        .report(20)
        .into_iter()
        .map(|stats| {
            json!({
                "fingerprint": format!("{:016x}", stats.id),
                "statement": stats.text,
                "calls": stats.calls,
                "total_ms": stats.total.as_secs_f64() * 1e3,
                "mean_ms": stats.mean.as_secs_f64() * 1e3,
                "p99_ms": stats.p99.as_secs_f64() * 1e3,
                "max_ms": stats.max.as_secs_f64() * 1e3,
                "rows": stats.rows,
                "slow_calls": stats.slow_calls,
                "n_plus_one_loops": stats.n_plus_one,
                "advice": stats.advice,
            })
        })
        .collect();
    Json(json!({
        "slow_threshold_ms": shared.config.slow_query_ms,
        "statements": report,
    }))
}

async fn status(State(shared): State<AppState>) -> Html<String> {
    Html(crate::status::page(&shared))
}
