//! Unique names, so tests sharing one server never see each other's data.

/// A fresh random identifier: 32 lowercase hex digits.
pub(crate) fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Runs `cleanup` to its end on a thread and a current-thread runtime of
/// its own, and reports a failure on stderr as `what` could not be cleaned
/// up: a `Drop` cannot await, and may run on any runtime flavour (or none).
pub(crate) fn clean_up<F, Fut>(what: &str, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(cleanup())
    })
    .join()
    .unwrap_or_else(|_| Err("cleanup thread panicked".to_owned()));
    if let Err(e) = outcome {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("perfkit-test-support: could not clean up {what}: {e}\n"),
        );
    }
}
