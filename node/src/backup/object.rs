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
//! Connection settings come from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for S3-compatible servers,
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint; or the pod's web identity).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

fn store_error(e: object_store::Error) -> BackupError {
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
        Ok(Self {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            key,
        })
    }

    /// The same store, key `key` under this location's key (a "directory").
    pub fn child(&self, name: &str) -> Self {
        Self {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            key: self.key.child(name),
        }
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
/// parts, then the manifest. Refuses to replace an existing backup.
pub async fn upload(file: &Path, manifest: &Manifest, to: &Location) -> Result<()> {
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
    let mut buf = vec![0u8; 1 << 20];
    let sent = async {
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(store_error)?;
            writer.write(&buf[..n]);
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
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    to.store
        .put(&to.manifest_key(), PutPayload::from(json))
        .await
        .map_err(store_error)?;
    Ok(())
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
pub async fn download(from: &Location, dest: &Path) -> Result<Manifest> {
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
    let got = from.store.get(&from.key).await.map_err(store_error)?;
    let mut stream = got.into_stream();
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let written = async {
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(store_error)?)
                .await
                .map_err(io(&partial))?;
        }
        file.sync_all().await.map_err(io(&partial))
    }
    .await;
    drop(file);
    super::keep_if_verified(written, &partial, dest, &manifest).await?;
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
            store: dir.store.clone(),
            bucket: dir.bucket.clone(),
            key: ObjectPath::from(key),
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

/// Keeps the newest `keep` backups named `<prefix>-<unix seconds>.sqlite3` under `dir` and
/// deletes the older ones (manifest first, so a half-done deletion is no longer a backup,
/// then the object), and objects of that form without a manifest that are older than the
/// newest backup (uploads that never finished). Returns the URLs deleted.
pub async fn prune(dir: &Location, prefix: &str, keep: usize) -> Result<Vec<String>> {
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
    let mut deleted = Vec::new();
    let mut kept = 0;
    for (stamp, key) in data {
        let complete = manifests.contains(key.as_ref());
        let drop_it = if complete {
            kept += 1;
            kept > keep
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
