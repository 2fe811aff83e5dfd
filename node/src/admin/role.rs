//! The roles an admin certificate can grant ([`super::access`] decides what each may call;
//! `crate::raft::certs` issues certificates carrying them).

/// The URI prefix of the subjectAltName that names a certificate's admin role. Part of the
/// contract with every issuer of admin certificates (the operator mints them too).
pub const ROLE_URI_PREFIX: &str = "urn:qpq:admin-role:";

/// What an admin caller is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The operator: membership changes, leadership transfer, finalize, backups.
    Operator,
    /// Backup Jobs and `qpq-node backup create`: backups and status.
    Backup,
    /// Dashboards and humans looking: status only.
    ReadOnly,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Operator, Role::Backup, Role::ReadOnly];

    /// The role's name in certificates, file names and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Backup => "backup",
            Role::ReadOnly => "read-only",
        }
    }

    /// The subjectAltName URI that grants this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    pub(crate) fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
