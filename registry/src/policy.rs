//! Connection security policy per org (docs/contract.md, section 4) and device tokens.
//!
//! The level says which credentials a connection needs: a client certificate, a token
//! (`use-token-auth` + the identity's token as password), either, and whether plain MQTT
//! (port 1883) is open. A device type can override the org's level, and a gateway type
//! can be limited to acting for listed device types. Tokens are stored as a random
//! 16-byte salt and HMAC-SHA256(salt, token), verified in constant time. A token set
//! through the API has 16-128 printable characters and a generated one 160 random bits,
//! so guessing one online is hopeless (docs/security.md, "Device tokens").

use std::collections::BTreeMap;

use ring::hmac;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::layout;
use crate::names::{Identity, Name, OrgId};
use crate::registry::{Change, Registry};
use crate::seal::random_bytes;
use crate::store::Op;

/// How a connection must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "How a connection must authenticate: `tls_client_cert` (TLS and a \
        valid client certificate; the default), `tls_client_cert_or_token` (TLS and a client \
        certificate or a token), `tls_token` (TLS and a token; a certificate alone is not \
        enough), `tls_optional` (as `tls_client_cert_or_token`, and plain MQTT with a token), \
        `tls_client_cert_and_token` (TLS, a valid client certificate and the identity's \
        token, both)."
    )
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// TLS and a valid client certificate (the default).
    #[default]
    TlsClientCert,
    /// TLS and a client certificate or a token.
    TlsClientCertOrToken,
    /// TLS and a token.
    TlsToken,
    /// As `TlsClientCertOrToken`, and also plain MQTT with a token.
    TlsOptional,
    /// TLS, a client certificate and a token, both (Watson's "token and certificate").
    TlsClientCertAndToken,
}

/// The transport a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tls,
    Plain,
}

impl Level {
    /// Whether a connection with these credentials is admitted at this level.
    pub fn admits(self, transport: Transport, has_cert: bool, has_token: bool) -> bool {
        match (self, transport) {
            (Level::TlsClientCert, Transport::Tls) => has_cert,
            (Level::TlsClientCertOrToken, Transport::Tls) => has_cert || has_token,
            (Level::TlsToken, Transport::Tls) => has_token,
            (Level::TlsOptional, Transport::Tls) => has_cert || has_token,
            (Level::TlsOptional, Transport::Plain) => has_token,
            (Level::TlsClientCertAndToken, Transport::Tls) => has_cert && has_token,
            (_, Transport::Plain) => false,
        }
    }

    /// Whether this level lets a TLS client connect without a certificate.
    pub fn cert_optional(self) -> bool {
        !matches!(self, Level::TlsClientCert | Level::TlsClientCertAndToken)
    }
}

/// An org's security policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecurityPolicy {
    #[serde(default)]
    pub level: Level,
    /// Per device (or gateway) type overrides of `level`.
    #[serde(default)]
    pub device_types: BTreeMap<String, Level>,
    /// Gateway type → the device types its gateways may act for (absent: any).
    #[serde(default)]
    pub gateway_device_types: BTreeMap<String, Vec<String>>,
    /// CA uploads must prove possession of the CA's key (a verification certificate
    /// signed by it whose CN is a code from `POST /orgs/{org}/ca-certs/verification-code`).
    #[serde(default)]
    pub require_ca_proof: bool,
}

impl SecurityPolicy {
    /// The level that applies to `identity`.
    pub fn level_for(&self, identity: &Identity) -> Level {
        let t = match identity {
            Identity::Device { device_type, .. } => Some(device_type),
            Identity::Gateway { gateway_type, .. } => Some(gateway_type),
            Identity::App { .. } => None,
        };
        t.and_then(|t| self.device_types.get(t.as_str()).copied())
            .unwrap_or(self.level)
    }

    /// The most permissive level any identity of the org may get: decides whether the
    /// TLS layer asks for an optional certificate and whether plain MQTT is open.
    pub fn loosest(&self) -> (bool, bool) {
        let levels = std::iter::once(self.level).chain(self.device_types.values().copied());
        let mut cert_optional = false;
        let mut plain = false;
        for l in levels {
            cert_optional |= l.cert_optional();
            plain |= l == Level::TlsOptional;
        }
        (cert_optional, plain)
    }

    /// The device types gateways of `gateway_type` may act for, if limited.
    pub fn gateway_scope(&self, gateway_type: &Name) -> Option<Vec<Name>> {
        self.gateway_device_types
            .get(gateway_type.as_str())
            .map(|v| {
                v.iter()
                    .filter_map(|t| Name::try_from(t.as_str()).ok())
                    .collect()
            })
    }

    fn validate(&self) -> Result<()> {
        for t in self
            .device_types
            .keys()
            .chain(self.gateway_device_types.keys())
            .chain(self.gateway_device_types.values().flatten())
        {
            Name::try_from(t.as_str())?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    identity: Identity,
    salt: String,
    hash: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Random bytes in a generated device token (160 bits, shown as 40 hex characters).
pub const GENERATED_TOKEN_BYTES: usize = 20;
/// Characters a device token set through the API must have.
pub const SET_TOKEN_CHARS: std::ops::RangeInclusive<usize> = 16..=128;

/// Checks a token chosen by the caller: 16-128 printable characters
/// (docs/security.md, "Device tokens"). Shorter ones are guessable online; the
/// broker throttles failed attempts, but the length is what makes guessing hopeless.
fn check_set_token(token: String) -> Result<String> {
    let n = token.chars().count();
    let rule = format!(
        "a device token must be {}-{} printable characters",
        SET_TOKEN_CHARS.start(),
        SET_TOKEN_CHARS.end()
    );
    if !SET_TOKEN_CHARS.contains(&n) {
        return Err(Error::BadRequest(format!("{rule}; this one has {n}")));
    }
    if let Some((at, c)) = crate::text::first_forbidden(&token) {
        return Err(Error::BadRequest(format!(
            "{rule}; this one has U+{:04X} at character {at}",
            c as u32
        )));
    }
    Ok(token)
}

/// HMAC-SHA256 keyed with the per-token salt, as org API tokens are stored.
fn token_hash(salt: &[u8], token: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    hmac::sign(&key, token.as_bytes()).as_ref().to_vec()
}

/// A device token, shown once when it is set.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceToken {
    pub identity: Identity,
    pub token: String,
}

impl Registry {
    pub fn security_policy(&self, org: &OrgId) -> Result<SecurityPolicy> {
        self.get_org(org)?;
        Ok(self.get_json(&layout::policy(org))?.unwrap_or_default())
    }

    /// Replaces the policy; live sessions it no longer admits are closed by the broker.
    pub fn set_security_policy(
        &self,
        org: &OrgId,
        policy: SecurityPolicy,
    ) -> Result<SecurityPolicy> {
        policy.validate()?;
        let _g = self.lock();
        self.get_org(org)?;
        self.store
            .apply(vec![Self::put(layout::policy(org), &policy)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(policy)
    }

    /// Sets the token of `identity` (a random one when `token` is `None`); the token is
    /// returned once and stored only as a salted hash.
    pub fn set_device_token(
        &self,
        org: &OrgId,
        identity: &str,
        token: Option<String>,
    ) -> Result<DeviceToken> {
        let identity = Identity::parse(identity)?;
        let token = match token {
            Some(t) => check_set_token(t)?,
            None => hex::encode(random_bytes::<GENERATED_TOKEN_BYTES>()),
        };
        let salt: [u8; 16] = random_bytes();
        let rec = StoredToken {
            identity: identity.clone(),
            salt: hex::encode(salt),
            hash: hex::encode(token_hash(&salt, &token)),
            created_at: OffsetDateTime::now_utc(),
        };
        let _g = self.lock();
        self.get_org(org)?;
        self.store
            .apply(vec![Self::put(layout::device_token(org, &identity), &rec)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(DeviceToken { identity, token })
    }

    pub fn delete_device_token(&self, org: &OrgId, identity: &str) -> Result<()> {
        let identity = Identity::parse(identity)?;
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::device_token(org, &identity);
        if self.store.get(&key)?.is_none() {
            return Err(Error::NotFound(format!("{identity} has no token")));
        }
        self.store.apply(vec![Op::Delete(key)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    /// Identities of `org` that have a token (never the tokens).
    pub fn list_device_tokens(&self, org: &OrgId) -> Result<Vec<Identity>> {
        self.get_org(org)?;
        Ok(self
            .scan_json::<StoredToken>(&layout::device_tokens(org))?
            .into_iter()
            .map(|t| t.identity)
            .collect())
    }

    /// Checks `token` against the token of `identity` in `org` (constant time). Returns
    /// the token's version (when it was set) if it matches, so a session admitted by it
    /// can be closed when the token is replaced or deleted.
    pub fn verify_device_token(
        &self,
        org: &OrgId,
        identity: &Identity,
        token: &str,
    ) -> Result<Option<OffsetDateTime>> {
        let Some(rec) = self.get_json::<StoredToken>(&layout::device_token(org, identity))? else {
            return Ok(None);
        };
        let (Ok(salt), Ok(hash)) = (hex::decode(&rec.salt), hex::decode(&rec.hash)) else {
            return Ok(None);
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salt);
        Ok(hmac::verify(&key, token.as_bytes(), &hash)
            .is_ok()
            .then_some(rec.created_at))
    }

    /// The version of the token of `identity`, if it has one.
    pub fn device_token_version(
        &self,
        org: &OrgId,
        identity: &Identity,
    ) -> Result<Option<OffsetDateTime>> {
        Ok(self
            .get_json::<StoredToken>(&layout::device_token(org, identity))?
            .map(|t| t.created_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_admit_the_right_credentials() {
        use Transport::{Plain, Tls};
        assert!(Level::TlsClientCert.admits(Tls, true, false));
        assert!(!Level::TlsClientCert.admits(Tls, false, true));
        assert!(Level::TlsClientCertOrToken.admits(Tls, false, true));
        assert!(!Level::TlsToken.admits(Tls, true, false));
        assert!(Level::TlsToken.admits(Tls, true, true));
        assert!(!Level::TlsToken.admits(Plain, false, true));
        assert!(Level::TlsOptional.admits(Plain, false, true));
        assert!(!Level::TlsOptional.admits(Plain, false, false));
        assert!(Level::TlsClientCertAndToken.admits(Tls, true, true));
        assert!(!Level::TlsClientCertAndToken.admits(Tls, true, false));
        assert!(!Level::TlsClientCertAndToken.admits(Tls, false, true));
        assert!(!Level::TlsClientCertAndToken.admits(Plain, true, true));
        assert!(!Level::TlsClientCertAndToken.cert_optional());
    }

    /// Security review finding: 8-character device tokens were accepted.
    #[test]
    fn set_tokens_need_16_to_128_printable_characters() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let set = |t: &str| r.set_device_token(&acme, "d:legacy:dev1", Some(t.to_owned()));
        for bad in [
            "8-chars!".to_owned(),
            "x".repeat(15),
            "x".repeat(129),
            format!("{}\u{0}", "x".repeat(20)),
            format!("{}\n", "x".repeat(20)),
            format!("{}\u{202e}", "x".repeat(20)),
        ] {
            match set(&bad) {
                Err(Error::BadRequest(m)) => {
                    assert!(m.contains("16-128"), "{bad:?}: {m}")
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        for good in [
            "x".repeat(16),
            "x".repeat(128),
            "correct horse battery".into(),
        ] {
            assert_eq!(set(&good).unwrap().token, good);
        }
    }

    #[test]
    fn generated_tokens_carry_at_least_128_random_bits() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let a = r.set_device_token(&acme, "d:legacy:a", None).unwrap().token;
        let b = r.set_device_token(&acme, "d:legacy:b", None).unwrap().token;
        // Hex of random bytes: 4 bits a character.
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert!(a.len() * 4 >= 128, "{a} has {} bits", a.len() * 4);
        assert_eq!(a.len() * 4, GENERATED_TOKEN_BYTES * 8);
        assert_ne!(a, b);
        // A generated token is itself a valid set token.
        r.set_device_token(&acme, "d:legacy:c", Some(a)).unwrap();
    }

    #[test]
    fn overrides_and_scopes() {
        let p: SecurityPolicy = serde_json::from_str(
            r#"{"level":"tls_client_cert","device_types":{"legacy":"tls_optional"},
                "gateway_device_types":{"gw":["sensor"]}}"#,
        )
        .unwrap();
        let legacy = Identity::parse("d:legacy:x").unwrap();
        let sensor = Identity::parse("d:sensor:x").unwrap();
        assert_eq!(p.level_for(&legacy), Level::TlsOptional);
        assert_eq!(p.level_for(&sensor), Level::TlsClientCert);
        assert_eq!(p.loosest(), (true, true));
        assert_eq!(SecurityPolicy::default().loosest(), (false, false));
        let gw = Name::try_from("gw").unwrap();
        assert_eq!(p.gateway_scope(&gw).unwrap()[0].as_str(), "sensor");
        assert!(serde_json::from_str::<SecurityPolicy>(r#"{"levle":"tls_token"}"#).is_err());
    }
}
