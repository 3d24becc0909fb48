//! Routing: which service a request belongs to and which variant serves its user.
//! Pure functions over a [`request::RequestView`]; the hashing in [`cohort`] is normative.

pub mod cohort;
pub mod compare;
pub mod key;
pub mod request;
pub mod router;
pub mod rules;
pub mod service_index;
#[cfg(test)]
mod service_index_reference;
pub mod table;

pub use request::RequestView;
pub use router::{CookieId, Decision, Reason, Router, Service};
pub use table::RoutingTable;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod rollback_tests;
