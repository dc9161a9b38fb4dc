//! Skip or fail: what a test does when the service it needs does not answer.

use std::fmt;
use std::io::Write;

use crate::service::{REQUIRE_SERVICES_VAR, Service};

/// Whether an absent service skips a test or fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Print why the test is skipped and let it return (local development).
    Optional,
    /// Fail the test, saying how to start the service (CI: `PERFKIT_REQUIRE_SERVICES=1`).
    Required,
}

impl Requirement {
    /// Reads `PERFKIT_REQUIRE_SERVICES`: `1`, `true` or `yes` mean [`Requirement::Required`].
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_value(std::env::var(REQUIRE_SERVICES_VAR).ok().as_deref())
    }

    /// Interprets a value of `PERFKIT_REQUIRE_SERVICES` (`None` when unset).
    #[must_use]
    pub fn from_value(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some(v)
                if v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes") =>
            {
                Self::Required
            }
            _ => Self::Optional,
        }
    }

    /// What to do about `unavailable` under this requirement.
    #[must_use]
    pub fn decide(self, unavailable: &Unavailable) -> Decision {
        match self {
            Self::Optional => Decision::Skip(format!(
                "SKIPPED {test}: {unavailable}. To run it, {hint}, or set {var}. \
                 Set {REQUIRE_SERVICES_VAR}=1 to make this a failure.",
                test = current_test(),
                hint = unavailable.service.start_hint(),
                var = unavailable.service.url_var(),
            )),
            Self::Required => Decision::Fail(format!(
                "{service} is required ({REQUIRE_SERVICES_VAR}=1) but {unavailable}. \
                 To fix it, {hint}, or point {var} at a running server.",
                service = unavailable.service,
                hint = unavailable.service.start_hint(),
                var = unavailable.service.url_var(),
            )),
        }
    }

    /// Carries out [`Requirement::decide`]: prints the skip reason to the
    /// uncaptured standard error, or fails the calling test.
    ///
    /// # Panics
    ///
    /// Under [`Requirement::Required`]: failing the test is the point.
    pub fn enforce(self, unavailable: &Unavailable) {
        match self.decide(unavailable) {
            Decision::Skip(message) => {
                // Not eprintln!: libtest captures that, and a skip must be visible.
                let _ = writeln!(std::io::stderr(), "{message}");
            }
            #[allow(clippy::panic)] // failing the test is this function's job
            Decision::Fail(message) => panic!("{message}"), // ok: failing the test is the point
        }
    }
}

/// The outcome of [`Requirement::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Skip the test; the message says why and how to run it.
    Skip(String),
    /// Fail the test; the message says how to start the service.
    Fail(String),
}

/// A service that did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// Which service.
    pub service: Service,
    /// The URL that was tried.
    pub url: String,
    /// What went wrong, as the client library reported it.
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} is unavailable ({})",
            self.service, self.url, self.reason
        )
    }
}

/// libtest names each test's thread after the test.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}
