//! The states the client database stores, as types. Their spellings in the database live here
//! and nowhere else: code and SQL bind these values as parameters, and a row holding a
//! spelling this build does not know reads as an error naming it, never as some other state.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A stored value that is not one of its type's states.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} in the client database")]
pub struct UnknownState {
    what: &'static str,
    value: String,
}

macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// Its spelling in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The state spelt `text`.
            ///
            /// # Errors
            /// [`UnknownState`] for any other text.
            pub fn parse(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(UnknownState { what: $what, value: other.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                Self::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

stored_enum! {
    /// Where an outgoing message stands (`outbox.status`).
    OutboxStatus, "outbox status" {
        /// To send.
        Pending = "pending",
        /// A Welcome waiting for its Commit (`after_id`) to be accepted.
        Held = "held",
        /// The node acknowledged it (`seq`).
        Sent = "sent",
        /// A Commit that lost its epoch, to be rebuilt from its intent.
        Retry = "retry",
        /// Refused for good; never sent again.
        Failed = "failed",
    }
}

stored_enum! {
    /// What an outgoing message is (`outbox.kind`).
    OutboxKind, "outbox kind" {
        /// An application message (its plaintext kept locally in `body`).
        Application = "application",
        /// A Commit (its intent as JSON in `body`).
        Commit = "commit",
        /// A Welcome, to an invitee's inbox.
        Welcome = "welcome",
        /// A proposal (leaving).
        Proposal = "proposal",
    }
}

stored_enum! {
    /// Where this device stands in a group (`groups.state`).
    GroupState, "group state" {
        /// A member.
        Active = "active",
        /// Asked to leave; a member until a Commit removes it.
        Leaving = "leaving",
        /// Removed after asking to leave.
        Left = "left",
        /// Removed by another member.
        Removed = "removed",
        /// Stopped: a message broke the client's policy.
        Failed = "failed",
    }
}

impl GroupState {
    /// Still a member (active or on its way out): it reads the group's channel.
    pub fn is_member(self) -> bool {
        matches!(self, Self::Active | Self::Leaving)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn round_trip<T: ToSql + FromSql + PartialEq + std::fmt::Debug + Copy>(all: &[T]) {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for v in all {
            let back: T = conn.query_row("SELECT ?1", [v], |r| r.get(0)).unwrap();
            assert_eq!(back, *v);
        }
    }

    #[test]
    fn every_state_reads_back_as_itself_and_spellings_are_distinct() {
        round_trip(OutboxStatus::ALL);
        round_trip(OutboxKind::ALL);
        round_trip(GroupState::ALL);
        let mut spellings: Vec<&str> = OutboxStatus::ALL.iter().map(|s| s.as_str()).collect();
        spellings.sort_unstable();
        spellings.dedup();
        assert_eq!(spellings.len(), OutboxStatus::ALL.len());
    }

    #[test]
    fn an_unknown_spelling_is_an_error_that_names_it() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT 'parked'", [], |r| r.get::<_, OutboxStatus>(0))
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown outbox status \"parked\""),
            "{err}"
        );
        let err = conn
            .query_row("SELECT 7", [], |r| r.get::<_, GroupState>(0))
            .unwrap_err();
        assert!(
            matches!(err, rusqlite::Error::InvalidColumnType(..)),
            "{err}"
        );
    }
}
