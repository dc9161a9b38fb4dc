//! # perfkit-models
//!
//! loom models of the state machines that live in crates whose dependencies
//! are too heavy to build a second time under `--cfg perfkit_loom` (the
//! tiered cache pulls in tokio, redis and, for its tests, sqlx). Each test
//! target (`tests/<crate>/`) is one crate's models: its root mirrors that
//! crate's root, compiling the state machines' own source files by path
//! against a `sync` module of loom's locks, with only the dependencies they
//! need. The code checked is the code shipped.
//!
//! Built normally, every target is empty. Run the models with
//!
//! ```sh
//! RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-models --release --tests --target-dir target/loom
//! ```
//!
//! Models of a crate without heavy dependencies live in that crate (see
//! `perfkit-breaker`); CONTRIBUTING.md says how to add one.
