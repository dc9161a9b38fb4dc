//! Unique names, so tests sharing one server never see each other's data.

/// A fresh random identifier: 32 lowercase hex digits.
pub(crate) fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
