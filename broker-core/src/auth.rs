//! Credentials: who is connecting, and with which role.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AuthError;

/// What a principal may do beyond the filter policy.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Role {
    /// An application client holding an API key: subscribe and publish.
    Client,
    /// An operator holding an admin token: may also invalidate subscriptions.
    Admin,
}

/// An authenticated identity. Its `id` names the key (never the secret itself), for logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    id: Arc<str>,
    role: Role,
}

impl Principal {
    /// A principal with a display id and a role.
    pub fn new(id: impl Into<Arc<str>>, role: Role) -> Self {
        Self {
            id: id.into(),
            role,
        }
    }

    /// The key's name, safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The principal's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this principal is an administrator.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", self.id, self.role)
    }
}

/// Resolves a presented credential to a [`Principal`].
///
/// Async because real backends (a database, an identity provider) are.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Resolves `credential` as of `now`. Implementations must not log or echo the credential.
    async fn authenticate(&self, credential: &str, now: SystemTime)
    -> Result<Principal, AuthError>;
}

/// A fixed set of API keys and admin tokens, compared in constant time.
///
/// Secrets are kept only as SHA-256 digests, and every lookup compares against every entry
/// without an early exit, so timing reveals neither which key matched nor how much of it.
#[derive(Clone, Default)]
pub struct StaticKeys {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    principal: Principal,
    expires: Option<SystemTime>,
}

impl StaticKeys {
    /// An empty set: every credential is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client API key named `name`, valid until `expires` when given.
    pub fn with_api_key(mut self, name: &str, key: &str, expires: Option<SystemTime>) -> Self {
        self.add(name, key, Role::Client, expires);
        self
    }

    /// Adds an admin token named `name`.
    pub fn with_admin_token(mut self, name: &str, token: &str) -> Self {
        self.add(name, token, Role::Admin, None);
        self
    }

    /// Adds a credential.
    pub fn add(&mut self, name: &str, secret: &str, role: Role, expires: Option<SystemTime>) {
        self.entries.push(Entry {
            digest: digest(secret),
            principal: Principal::new(name, role),
            expires,
        });
    }

    /// Number of credentials held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no credential is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The synchronous lookup behind [`Authenticator::authenticate`].
    pub fn lookup(&self, credential: &str, now: SystemTime) -> Result<Principal, AuthError> {
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        let presented = digest(credential);
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            let matched: bool = entry.digest.ct_eq(&presented).into();
            if matched && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthError::Unknown)?;
        match entry.expires {
            Some(at) if now >= at => Err(AuthError::Expired),
            _ => Ok(entry.principal.clone()),
        }
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and roles only: digests of weak keys could be brute-forced from a log.
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.principal))
            .finish()
    }
}

#[async_trait]
impl Authenticator for StaticKeys {
    async fn authenticate(
        &self,
        credential: &str,
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        self.lookup(credential, now)
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn resolves_roles_and_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let keys = StaticKeys::new()
            .with_api_key("app", "k-123", None)
            .with_api_key("old", "k-old", Some(now - Duration::from_secs(1)))
            .with_api_key("soon", "k-soon", Some(now + Duration::from_secs(1)))
            .with_admin_token("ops", "t-456");
        assert_eq!(keys.lookup("k-123", now).unwrap().role(), Role::Client);
        assert_eq!(keys.lookup("t-456", now).unwrap().role(), Role::Admin);
        assert_eq!(keys.lookup("k-soon", now).unwrap().id(), "soon");
        assert_eq!(keys.lookup("k-old", now), Err(AuthError::Expired));
        assert_eq!(keys.lookup("k-12", now), Err(AuthError::Unknown));
        assert_eq!(keys.lookup("", now), Err(AuthError::Missing));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let keys = StaticKeys::new().with_api_key("app", "super-secret-key", None);
        let shown = format!("{keys:?}");
        assert!(shown.contains("app"));
        assert!(!shown.contains("super-secret-key"));
    }
}
