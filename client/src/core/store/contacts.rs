//! The CLI's local names for accounts (`contacts`) and device keys (`contact_keys`).

use qpq_schemas::{AccountId, IdentityKey};
use rusqlite::{OptionalExtension as _, params};

use super::{Store, invalid};
use crate::error::Result;

impl Store<'_> {
    /// The account named `name`.
    pub(crate) fn contact(self, name: &str) -> Result<Option<AccountId>> {
        let raw: Option<Vec<u8>> = self
            .0
            .query_row(
                "SELECT identity FROM contacts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        raw.map(|r| AccountId::from_slice(&r).map_err(invalid))
            .transpose()
    }

    /// Every contact as (name, account), by name (a row whose account does not parse is
    /// skipped).
    pub(crate) fn contacts(self) -> Result<Vec<(String, AccountId)>> {
        let mut stmt = self
            .0
            .prepare("SELECT name, identity FROM contacts ORDER BY name")?;
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(n, a)| Some((n, AccountId::from_slice(&a).ok()?)))
            .collect())
    }

    /// The name of `account`.
    pub(crate) fn name_of_account(self, account: &AccountId) -> Result<Option<String>> {
        Ok(self
            .0
            .query_row(
                "SELECT name FROM contacts WHERE identity = ?1",
                [&account.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The name of the device key `identity`: its own, or its account's.
    pub(crate) fn name_of_key(self, identity: &IdentityKey) -> Result<Option<String>> {
        Ok(self
            .0
            .query_row(
                "SELECT name FROM contact_keys WHERE identity = ?1
                 UNION ALL
                 SELECT c.name FROM members m JOIN contacts c ON c.identity = m.account
                 WHERE m.identity = ?1
                 LIMIT 1",
                [&identity.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Names `account` (and, if given, its device key `key`).
    pub(crate) fn name_contact(
        self,
        name: &str,
        account: &AccountId,
        key: Option<&IdentityKey>,
    ) -> Result<()> {
        self.0.execute(
            "INSERT OR REPLACE INTO contacts (name, identity) VALUES (?1, ?2)",
            params![name, &account.as_bytes()[..]],
        )?;
        if let Some(k) = key {
            self.0.execute(
                "INSERT OR REPLACE INTO contact_keys (identity, name) VALUES (?1, ?2)",
                params![&k.as_bytes()[..], name],
            )?;
        }
        Ok(())
    }
}
