//! `/v1/embeddings` against an OpenAI-compatible provider (a mock one, over
//! real HTTP): the app's callers are batched into the provider's calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_go_to_the_configured_provider_in_batches() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let provider = axum::Router::new().route(
        "/v1/embeddings",
        post(move |Json(body): Json<Value>| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let inputs = body["input"].as_array().cloned().unwrap_or_default();
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(index, text)| {
                        let length = text.as_str().map_or(0, str::len);
                        json!({"object": "embedding", "index": index, "embedding": [length as f64, 1.0]})
                    })
                    .collect();
                Json(json!({
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()},
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, provider).await });

    let (mut config, dir) = common::embedded();
    config.openai_base_url = Some(base);
    config.openai_api_key = Some("sk-test".to_owned());
    let app = common::serve(config, Some(dir)).await;
    let http = common::client();
    let response = http
        .post(app.url("/v1/embeddings"))
        .json(&json!({"input": ["a", "bb", "ccc", "dddd"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let lengths: Vec<f64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["embedding"][0].as_f64().unwrap())
        .collect();
    assert_eq!(
        lengths,
        [1.0, 2.0, 3.0, 4.0],
        "each caller got its own vector"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "four inputs, one provider call"
    );
    app.stop().await;
}
