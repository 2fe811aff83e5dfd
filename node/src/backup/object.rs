//! Backups in S3-compatible object storage (`s3://bucket/key`).
//!
//! A backup is two objects: the database at `<key>` and its manifest at
//! `<key>.manifest.json`, the same JSON as beside a local backup file. The manifest is
//! written **last**, once the database object is complete, so it is the commit marker: an
//! upload cut short leaves no manifest (or no object at all, for an unfinished multipart
//! upload) and is never listed, verified or restored as a backup. Reading a backup fetches
//! the manifest first, streams the object to a local file and verifies it (size, SHA-256,
//! SQLite integrity, row counts, state digest) before anything uses it.
//!
//! With `QPQ_BACKUP_KEY` set, objects are uploaded encrypted ([`super::crypt`]), and only
//! encrypted backups are read: one that is not would be trusted without the proof of
//! origin that opening it with the key gives.
//!
//! Connection settings come from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for S3-compatible servers,
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint; or the pod's web identity).

use crate::at_rest::AtRest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::crypt::{self, BackupKey, Opener, Sealer};
use super::{BackupError, Manifest, Result, parse_manifest};

/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// Whether `location` names object storage rather than a local path.
pub fn is_url(location: &str) -> bool {
    location.starts_with("s3://")
}

/// An object store and a key (or key prefix) in it, from an `s3://bucket/key` URL.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: ObjectPath,
    /// Seals uploads and opens downloads (`QPQ_BACKUP_KEY`).
    secret: Option<Arc<BackupKey>>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

pub(super) fn store_error(e: object_store::Error) -> BackupError {
    BackupError::Transfer(format!("object storage: {e}"))
}

impl Location {
    /// Parses `s3://bucket/key`; credentials and endpoint from the environment.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BackupError::Transfer(format!("{url}: not an s3:// URL")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BackupError::Transfer(format!("{url}: no bucket")));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(store_error)?;
        let key = ObjectPath::parse(key.trim_end_matches('/'))
            .map_err(|e| BackupError::Transfer(format!("{url}: {e}")))?;
        let secret = BackupKey::from_env()?.map(Arc::new);
        Ok(Self::new(Arc::new(store), bucket, key, secret))
    }

    /// `key` in `store` (named `bucket` in URLs), sealed with `secret` if given.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        key: ObjectPath,
        secret: Option<Arc<BackupKey>>,
    ) -> Self {
        Self {
            store,
            bucket: bucket.to_owned(),
            key,
            secret,
        }
    }

    /// The same store, key `key` under this location's key (a "directory").
    pub fn child(&self, name: &str) -> Self {
        Self {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            key: self.key.child(name),
            secret: self.secret.clone(),
        }
    }

    /// The object store.
    pub(super) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key (or key prefix).
    pub(super) fn key(&self) -> &ObjectPath {
        &self.key
    }

    /// `s3://bucket/<key>` of another key in the same bucket.
    pub(super) fn url_of(&self, key: &ObjectPath) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The backup key, if one is set.
    pub(super) fn secret(&self) -> Option<&BackupKey> {
        self.secret.as_deref()
    }

    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn manifest_key(&self) -> ObjectPath {
        ObjectPath::from(format!("{}.manifest.json", self.key))
    }
}

/// Uploads the verified local backup `file` (with `manifest`) to `to`: the database in
/// parts (sealed, with a key), then the manifest. Refuses to replace an existing backup.
/// Returns the manifest stored (which names the encryption, if any).
pub async fn upload(file: &Path, manifest: &Manifest, to: &Location) -> Result<Manifest> {
    if to.store.head(&to.manifest_key()).await.is_ok() {
        return Err(BackupError::Transfer(format!(
            "{}: a backup already exists there",
            to.url()
        )));
    }
    let io = |e: std::io::Error| BackupError::Io {
        path: file.to_path_buf(),
        source: e,
    };
    let upload = to.store.put_multipart(&to.key).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut f = tokio::fs::File::open(file).await.map_err(io)?;
    let mut sealer = to
        .secret
        .as_deref()
        .map(|k| Sealer::new(k, &manifest.sha256));
    let sent = async {
        if let Some((_, header)) = &sealer {
            writer.write(header);
        }
        // Read a piece ahead: a sealer must know which piece is the last.
        let mut piece = vec![0u8; crypt::PIECE];
        let mut next = vec![0u8; crypt::PIECE];
        let mut n = read_full(&mut f, &mut piece).await.map_err(io)?;
        loop {
            let m = if n == crypt::PIECE {
                read_full(&mut f, &mut next).await.map_err(io)?
            } else {
                0
            };
            writer.wait_for_capacity(4).await.map_err(store_error)?;
            match (&mut sealer, m) {
                (None, _) => writer.write(&piece[..n]),
                (Some((s, _)), 1..) => writer.write(&s.next(&piece[..n])?),
                (Some(_), 0) => {
                    if let Some((s, _)) = sealer.take() {
                        writer.write(&s.last(&piece[..n])?);
                    }
                }
            }
            if m == 0 {
                break;
            }
            std::mem::swap(&mut piece, &mut next);
            n = m;
        }
        Ok::<_, BackupError>(())
    }
    .await;
    match sent {
        Ok(()) => {
            writer.finish().await.map_err(store_error)?;
        }
        Err(e) => {
            // Nothing half-written stays behind as an object.
            let _ = writer.abort().await;
            return Err(e);
        }
    }
    let stored = match &to.secret {
        Some(k) => Manifest {
            format: super::FORMAT_ENCRYPTED,
            encryption: Some(k.encryption()),
            ..manifest.decrypted()
        },
        None => manifest.decrypted(),
    };
    let json =
        serde_json::to_vec_pretty(&stored).map_err(|e| BackupError::Manifest(e.to_string()))?;
    to.store
        .put(&to.manifest_key(), PutPayload::from(json))
        .await
        .map_err(store_error)?;
    Ok(stored)
}

/// What opens the object of `manifest` at `from`: `None` for a plain object. Refuses a
/// plain object when a key is set, and an encrypted one without the key it names.
fn opener_for(from: &Location, manifest: &Manifest) -> Result<Option<Opener>> {
    match (&manifest.encryption, from.secret.as_deref()) {
        (None, None) => Ok(None),
        (Some(e), Some(k)) => {
            k.check(e)?;
            Ok(Some(Opener::new(k, &manifest.sha256)))
        }
        (Some(e), None) => Err(BackupError::Encryption(format!(
            "{} is encrypted with key {}: set {}",
            from.url(),
            e.key_id,
            crypt::KEY_ENV
        ))),
        (None, Some(_)) => Err(BackupError::Encryption(format!(
            "{} is not encrypted, and {} is set: only encrypted backups are read with a key",
            from.url(),
            crypt::KEY_ENV
        ))),
    }
}

/// Fills `buf` from `f` unless the file ends first; returns how much it read.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).await? {
            0 => break,
            r => n += r,
        }
    }
    Ok(n)
}

/// Reads the manifest of the backup at `from` (none: not a backup).
pub async fn read_manifest(from: &Location) -> Result<Manifest> {
    let got = match from.store.get(&from.manifest_key()).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(BackupError::Manifest(format!(
                "{} has no manifest: not a backup (or an upload that did not finish)",
                from.url()
            )));
        }
        Err(e) => return Err(store_error(e)),
    };
    let bytes = got.bytes().await.map_err(store_error)?;
    let text =
        String::from_utf8(bytes.to_vec()).map_err(|e| BackupError::Manifest(e.to_string()))?;
    parse_manifest(&text)
}

/// Downloads the backup at `from` to the local file `dest` (which must not exist) with its
/// manifest beside it, and verifies it; `dest` exists only if it verified.
///
/// `at_rest` is the database key the file inside is encrypted under, if its manifest names
/// one (`db_key`); the object's own encryption, under the backup key, is separate.
pub async fn download(from: &Location, dest: &Path, at_rest: &AtRest) -> Result<Manifest> {
    let manifest = read_manifest(from).await?;
    if dest.try_exists().map_err(|e| BackupError::Io {
        path: dest.to_path_buf(),
        source: e,
    })? {
        return Err(BackupError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
        });
    }
    let partial = {
        let mut name = dest.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| BackupError::Io { path: p, source: e }
    };
    let mut opener = opener_for(from, &manifest)?;
    let got = from.store.get(&from.key).await.map_err(store_error)?;
    let mut stream = got.into_stream();
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let written = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(store_error)?;
            let plain = match &mut opener {
                Some(o) => o.push(&chunk)?,
                None => chunk.to_vec(),
            };
            file.write_all(&plain).await.map_err(io(&partial))?;
        }
        if let Some(o) = opener.take() {
            file.write_all(&o.finish()?).await.map_err(io(&partial))?;
        }
        file.sync_all().await.map_err(io(&partial))
    }
    .await;
    drop(file);
    super::keep_if_verified(written, &partial, dest, &manifest, at_rest).await?;
    Ok(manifest)
}

/// The backups under `dir` (objects with a manifest), by key: `(url, manifest)`, sorted by
/// key. Objects without a manifest (uploads that did not finish, other files) are skipped.
pub async fn list(dir: &Location) -> Result<Vec<(String, Manifest)>> {
    let mut keys = Vec::new();
    let mut listing = dir.store.list(Some(&dir.key));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(store_error)?;
        let key = meta.location.to_string();
        if let Some(data) = key.strip_suffix(".manifest.json") {
            keys.push(data.to_owned());
        }
    }
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let at = Location {
            key: ObjectPath::from(key),
            ..dir.clone()
        };
        // The data object must exist too: a manifest alone is not a backup.
        if at.store.head(&at.key).await.is_err() {
            continue;
        }
        let manifest = read_manifest(&at).await?;
        out.push((at.url(), manifest));
    }
    Ok(out)
}

/// Of the backups named `<prefix>-<unix seconds>.sqlite3` under `dir`, deletes those
/// `retention` expires at `now` (manifest first, so a half-done deletion is no longer a
/// backup, then the object), and objects of that form without a manifest that are older than the
/// newest backup (uploads that never finished). Returns the URLs deleted.
pub async fn prune(
    dir: &Location,
    prefix: &str,
    retention: &super::Retention,
    now: u64,
) -> Result<Vec<String>> {
    let stamp_of = |key: &str| -> Option<u64> {
        key.rsplit('/')
            .next()?
            .strip_prefix(prefix)?
            .strip_prefix('-')?
            .strip_suffix(".sqlite3")
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()
    };
    let mut data: Vec<(u64, ObjectPath)> = Vec::new();
    let mut manifests = std::collections::BTreeSet::new();
    let mut listing = dir.store.list(Some(&dir.key));
    while let Some(meta) = listing.next().await {
        let key = meta.map_err(store_error)?.location.to_string();
        if let Some(d) = key.strip_suffix(".manifest.json") {
            manifests.insert(d.to_owned());
        } else if let Some(stamp) = stamp_of(&key) {
            data.push((stamp, ObjectPath::from(key)));
        }
    }
    data.sort_by_key(|(stamp, _)| std::cmp::Reverse(*stamp));
    let newest_backup = data
        .iter()
        .find(|(_, k)| manifests.contains(k.as_ref()))
        .map(|(s, _)| *s);
    let complete: Vec<u64> = data
        .iter()
        .filter(|(_, k)| manifests.contains(k.as_ref()))
        .map(|(stamp, _)| *stamp)
        .collect();
    let expired = retention.expired(&complete, now);
    let mut deleted = Vec::new();
    for (stamp, key) in data {
        let complete = manifests.contains(key.as_ref());
        let drop_it = if complete {
            expired.contains(&stamp)
        } else {
            newest_backup.is_some_and(|n| stamp < n)
        };
        if !drop_it {
            continue;
        }
        if complete {
            let manifest = ObjectPath::from(format!("{key}.manifest.json"));
            dir.store.delete(&manifest).await.map_err(store_error)?;
        }
        dir.store.delete(&key).await.map_err(store_error)?;
        deleted.push(format!("s3://{}/{key}", dir.bucket));
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use object_store::memory::InMemory;

    use super::*;
    use crate::backup::crypt::HEADER;

    /// A verified backup of a state database holding three messages of 1 MiB (four pieces
    /// when sealed), marked by `mark` so that two backups differ.
    fn backed_up(mark: u8) -> (tempfile::TempDir, PathBuf, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.sqlite3");
        drop(crate::state::Store::open(&db).unwrap());
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO channels (channel, last_seq) VALUES (?1, 3)",
            [vec![mark; 16]],
        )
        .unwrap();
        for seq in 1..=3u8 {
            conn.execute(
                "INSERT INTO messages (channel, seq, client_msg_id, payload, enqueued_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 1)",
                rusqlite::params![
                    vec![mark; 16],
                    seq,
                    vec![seq; 16],
                    vec![seq ^ mark; 1 << 20]
                ],
            )
            .unwrap();
        }
        drop(conn);
        let copy = dir.path().join("backup.sqlite3");
        let manifest = crate::backup::copy_database(&db, &copy, 1, &AtRest::plaintext()).unwrap();
        assert!(manifest.bytes > 3 << 20, "{} bytes", manifest.bytes);
        (dir, copy, manifest)
    }

    fn key(byte: u8) -> Option<Arc<BackupKey>> {
        Some(Arc::new(
            BackupKey::parse(&hex::encode([byte; 32])).unwrap(),
        ))
    }

    fn at(store: &Arc<InMemory>, name: &str, secret: Option<Arc<BackupKey>>) -> Location {
        Location::new(store.clone(), "b", ObjectPath::from(name), secret)
    }

    async fn object(store: &InMemory, name: &str) -> Vec<u8> {
        let got = store.get(&ObjectPath::from(name)).await.unwrap();
        got.bytes().await.unwrap().to_vec()
    }

    fn refused(r: Result<Manifest>, dest: &Path, says: &str) {
        match r {
            Err(BackupError::Encryption(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("expected an encryption error ({says}), got {other:?}"),
        }
        assert!(!dest.exists(), "{} kept", dest.display());
    }

    #[tokio::test]
    async fn an_encrypted_backup_round_trips_and_its_object_holds_no_plaintext() {
        let (dir, file, manifest) = backed_up(1);
        let store = Arc::new(InMemory::new());
        let returned = upload(&file, &manifest, &at(&store, "k/x.sqlite3", key(7)))
            .await
            .unwrap();

        let sealed = object(&store, "k/x.sqlite3").await;
        let pieces = manifest.bytes.div_ceil(crypt::PIECE as u64);
        assert!(pieces >= 4, "{pieces} pieces");
        assert_eq!(
            sealed.len() as u64,
            HEADER as u64 + manifest.bytes + pieces * 16
        );
        let plain = std::fs::read(&file).unwrap();
        assert!(!sealed.windows(15).any(|w| w == b"SQLite format 3"));
        assert!(
            !sealed
                .windows(64)
                .any(|w| w == &plain[plain.len() / 2..][..64])
        );

        let stored = read_manifest(&at(&store, "k/x.sqlite3", None))
            .await
            .unwrap();
        assert_eq!(stored.format, crate::backup::FORMAT_ENCRYPTED);
        let e = stored.encryption.clone().unwrap();
        assert_eq!(e.key_id, key(7).unwrap().id());
        assert_eq!(stored.decrypted(), manifest);
        assert_eq!(returned, stored);

        let dest = dir.path().join("restored.sqlite3");
        let got = download(
            &at(&store, "k/x.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await
        .unwrap();
        assert_eq!(got, stored);
        assert_eq!(std::fs::read(&dest).unwrap(), plain);
        // The local copy is kept decrypted, with a plain manifest that verifies.
        let local = crate::backup::read_manifest(&dest).unwrap();
        assert_eq!(local, manifest);
        crate::backup::verify(&dest, &local, &AtRest::plaintext()).unwrap();
    }

    #[tokio::test]
    async fn without_the_key_with_another_key_or_a_plain_object_under_a_key_nothing_is_kept() {
        let (dir, file, manifest) = backed_up(2);
        let store = Arc::new(InMemory::new());
        upload(&file, &manifest, &at(&store, "sealed.sqlite3", key(7)))
            .await
            .unwrap();
        upload(&file, &manifest, &at(&store, "plain.sqlite3", None))
            .await
            .unwrap();
        let dest = dir.path().join("out.sqlite3");
        let id = key(7).unwrap().id().to_owned();

        let r = download(
            &at(&store, "sealed.sqlite3", None),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(
            r,
            &dest,
            &format!("encrypted with key {id}: set QPQ_BACKUP_KEY"),
        );
        let r = download(
            &at(&store, "sealed.sqlite3", key(8)),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(
            r,
            &dest,
            &format!("encrypted with key {id}, QPQ_BACKUP_KEY holds key"),
        );
        let r = download(
            &at(&store, "plain.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(r, &dest, "is not encrypted");
        // Without a key, a plain backup reads as before.
        download(
            &at(&store, "plain.sqlite3", None),
            &dest,
            &AtRest::plaintext(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn prune_by_age_deletes_old_backups_and_old_unfinished_uploads_but_never_the_newest() {
        const DAY: u64 = 86_400;
        let now = 1_800_000_000;
        let store = Arc::new(InMemory::new());
        let put = |key: String| {
            let store = store.clone();
            async move {
                store
                    .put(&ObjectPath::from(key), PutPayload::from_static(b"x"))
                    .await
                    .unwrap();
            }
        };
        for age in [40, 10, 0] {
            let name = format!("p/c-{}.sqlite3", now - age * DAY);
            put(format!("{name}.manifest.json")).await;
            put(name).await;
        }
        put(format!("p/c-{}.sqlite3", now - 50 * DAY)).await; // never finished
        put(format!("p/other-{}.sqlite3", now - 90 * DAY)).await; // another prefix
        let dir = at(&store, "p", None);
        let r = crate::backup::Retention {
            keep: None,
            max_age_days: Some(30),
        };
        let mut deleted = prune(&dir, "c", &r, now).await.unwrap();
        deleted.sort();
        assert_eq!(
            deleted,
            [
                format!("s3://b/p/c-{}.sqlite3", now - 50 * DAY),
                format!("s3://b/p/c-{}.sqlite3", now - 40 * DAY),
            ]
        );
        let keys = || async {
            let mut keys: Vec<String> = store
                .list(Some(&ObjectPath::from("p")))
                .map(|m| m.unwrap().location.to_string())
                .collect()
                .await;
            keys.sort();
            keys
        };
        let (ten, newest, other) = (now - 10 * DAY, now, now - 90 * DAY);
        assert_eq!(
            keys().await,
            [
                format!("p/c-{ten}.sqlite3"),
                format!("p/c-{ten}.sqlite3.manifest.json"),
                format!("p/c-{newest}.sqlite3"),
                format!("p/c-{newest}.sqlite3.manifest.json"),
                format!("p/other-{other}.sqlite3"),
            ]
        );
        // Much later, with nothing new: the newest backup stays.
        let later = now + 365 * DAY;
        let deleted = prune(&dir, "c", &r, later).await.unwrap();
        assert_eq!(deleted, [format!("s3://b/p/c-{ten}.sqlite3")]);
        assert_eq!(
            keys().await,
            [
                format!("p/c-{newest}.sqlite3"),
                format!("p/c-{newest}.sqlite3.manifest.json"),
                format!("p/other-{other}.sqlite3"),
            ],
            "the newest stays; another prefix is not touched"
        );
    }

    #[tokio::test]
    async fn a_changed_cut_or_swapped_encrypted_object_is_refused() {
        let (dir, file, manifest) = backed_up(3);
        let (_other_dir, other_file, other) = backed_up(4);
        let store = Arc::new(InMemory::new());
        for (name, f, m) in [
            ("a.sqlite3", &file, &manifest),
            ("b.sqlite3", &other_file, &other),
        ] {
            upload(f, m, &at(&store, name, key(7))).await.unwrap();
        }
        let sealed = object(&store, "a.sqlite3").await;
        let dest = dir.path().join("out.sqlite3");
        let replace = |bytes: Vec<u8>| {
            let store = store.clone();
            async move {
                store
                    .put(&ObjectPath::from("a.sqlite3"), PutPayload::from(bytes))
                    .await
                    .unwrap();
            }
        };

        let mut flipped = sealed.clone();
        flipped[sealed.len() / 2] ^= 0x01;
        replace(flipped).await;
        let r = download(
            &at(&store, "a.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(r, &dest, "does not open");

        // Cut after the second piece: what is left ends on a piece not flagged last.
        replace(sealed[..HEADER + 2 * (crypt::PIECE + 16)].to_vec()).await;
        let r = download(
            &at(&store, "a.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(r, &dest, "does not open");

        // Another backup's object, sealed with the same key, under this manifest.
        replace(object(&store, "b.sqlite3").await).await;
        let r = download(
            &at(&store, "a.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await;
        refused(r, &dest, "does not open");

        replace(sealed).await;
        download(
            &at(&store, "a.sqlite3", key(7)),
            &dest,
            &AtRest::plaintext(),
        )
        .await
        .unwrap();
    }
}
