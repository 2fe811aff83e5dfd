//! The KeyPackages this device uploaded, for rotation.

use rusqlite::params;

use super::Store;
use crate::core::{to_i64, to_u64};
use crate::error::Result;

impl Store<'_> {
    /// When the newest KeyPackage of the kind was uploaded.
    pub(crate) fn newest_key_package(self, last_resort: bool) -> Result<Option<u64>> {
        let at: Option<i64> = self.0.query_row(
            "SELECT max(uploaded_at_ms) FROM key_packages WHERE last_resort = ?1",
            [last_resort],
            |r| r.get(0),
        )?;
        Ok(at.map(to_u64))
    }

    /// Records an upload of the KeyPackage `hash_ref` (its serialized reference).
    pub(crate) fn record_key_package(
        self,
        hash_ref: &[u8],
        now_ms: u64,
        last_resort: bool,
    ) -> Result<()> {
        self.0.execute(
            "INSERT OR REPLACE INTO key_packages (hash_ref, uploaded_at_ms, last_resort)
             VALUES (?1, ?2, ?3)",
            params![hash_ref, to_i64(now_ms), last_resort],
        )?;
        Ok(())
    }

    /// KeyPackages uploaded before `cutoff_ms`, except the newest last-resort one (still
    /// served, whatever its age).
    pub(crate) fn key_packages_before(self, cutoff_ms: u64) -> Result<Vec<Vec<u8>>> {
        let newest_last_resort = self.newest_key_package(true)?;
        let mut stmt = self.0.prepare(
            "SELECT hash_ref FROM key_packages WHERE uploaded_at_ms < ?1
             AND NOT (last_resort = 1 AND uploaded_at_ms = ?2)",
        )?;
        let keep = newest_last_resort.map_or(-1, to_i64);
        Ok(stmt
            .query_map(params![to_i64(cutoff_ms), keep], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    pub(crate) fn forget_key_package(self, hash_ref: &[u8]) -> Result<()> {
        self.0
            .execute("DELETE FROM key_packages WHERE hash_ref = ?1", [hash_ref])?;
        Ok(())
    }
}
