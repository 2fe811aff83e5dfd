//! The client's own tables, typed: every SQL statement of the client core and the CLI is
//! here, and nowhere else (openmls's tables are `crate::mls_store`'s; the schema, its
//! migrations and the `meta` key-value table are `crate::db`'s).
//!
//! [`Store`] borrows the device's one connection, so its statements run inside whatever
//! transaction the caller holds: the core opens one per step (`Provider::transaction`) and
//! calls these inside it. Ids, channels and keys go in and come out as their types; states
//! as `crate::states`' enums; a value that does not parse is [`Error::Invalid`] (or, where a
//! caller can do without it, `None`).

use rusqlite::Connection;

use crate::error::Error;

mod contacts;
mod events;
mod groups;
mod key_packages;
mod outbox;

pub(crate) use events::NewEvent;
pub(crate) use groups::GroupRow;
pub(crate) use outbox::{NewOutbox, Own, Pending, Retry};

fn invalid(e: qpq_schemas::IdError) -> Error {
    Error::Invalid(e.to_string())
}

/// The client's tables over the device's connection.
#[derive(Clone, Copy)]
pub(crate) struct Store<'c>(pub(crate) &'c Connection);

#[cfg(test)]
mod tests;
