//! The device's session (account, device, tokens) in the client database, and the
//! authentication handed to the node adapter.

use super::*;

/// Meta keys of the stored session.
pub(super) const SESSION_KEYS: [&str; 4] = ["account", "device", "access_token", "refresh_token"];

pub(super) fn load_session(provider: &Provider) -> Result<Option<Session>> {
    let (Some(account), Some(device)) = (provider.meta("account")?, provider.meta("device")?)
    else {
        return Ok(None);
    };
    let bad = |e: qpq_schemas::IdError| Error::Invalid(e.to_string());
    let token = |k: &str| -> Result<Option<qpq_schemas::BearerToken>> {
        Ok(provider
            .meta(k)?
            .filter(|t| !t.is_empty())
            .map(qpq_schemas::BearerToken::new))
    };
    Ok(Some(Session {
        account: AccountId::from_slice(&account).map_err(bad)?,
        device: DeviceId::from_slice(&device).map_err(bad)?,
        access: token("access_token")?,
        refresh: token("refresh_token")?,
    }))
}

pub(super) fn store_session(conn: &rusqlite::Connection, s: &Session) -> rusqlite::Result<()> {
    let values: [Vec<u8>; 4] = [
        s.account.as_bytes().to_vec(),
        s.device.as_bytes().to_vec(),
        s.access
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
        s.refresh
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
    ];
    for (k, v) in SESSION_KEYS.iter().zip(values) {
        crate::db::set_meta(conn, k, &v)?;
    }
    Ok(())
}

/// Lets `node` act as this device: sign with its key, start from the stored session, and
/// store every new one (through a second connection to the database file, so that the
/// adapter needs no access to the client; an in-memory database keeps tokens in memory).
pub(super) fn attach_auth<N: NodeApi>(
    provider: &Provider,
    signer: &std::rc::Rc<SignatureKeyPair>,
    identity: IdentityKey,
    node: &N,
) {
    use openmls_traits::signatures::Signer as _;
    let key = signer.clone();
    let sign: SignFn = std::rc::Rc::new(move |m: &[u8]| key.sign(m).map_err(|e| format!("{e:?}")));
    let session = load_session(provider).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "stored session unreadable; the device must register");
        None
    });
    let path = provider
        .conn()
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let key = provider.key().clone();
    let save: SaveFn = std::rc::Rc::new(move |s: &Session| {
        let Some(path) = &path else { return };
        let stored = key.open(std::path::Path::new(path)).and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            store_session(&c, s).map_err(crate::Error::from)
        });
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store the session");
        }
    });
    node.attach(DeviceAuth {
        identity,
        sign,
        session,
        save,
    });
}
