//! Per-org TLS: which org an SNI name selects, and that org's cached `ServerConfig`
//! (its active server certificate + a client verifier over its active CAs only).
//!
//! Configs live in an [`ArcSwap`]ed map, so the handshake path takes no lock. A registry
//! change drops the org's entry synchronously (see [`OrgTlsCache::invalidate`], called
//! by the broker's one change listener); the next handshake rebuilds it from the
//! registry. A rebuilt config also gets a fresh ticket key, so a TLS session resumed
//! after a CA was deactivated cannot skip verification.
//!
//! After a handshake, [`OrgTls::peer_cert`] reads what admission needs off the verified
//! chain: identity, the admitting CA, serial and expiry.

use crate::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::admission::{OrgRules, PeerCert};
use crate::chain::{self, Crls, Revoked};
use arc_swap::ArcSwap;
use registry::{cert, OrgId, OrgLimits, Registry};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// One of an org's active CAs, as the broker needs it after a handshake.
#[derive(Debug, Clone)]
pub struct ActiveCa {
    pub id: String,
    pub fingerprint: String,
    der: Vec<u8>,
    subject_raw: Vec<u8>,
}

/// An org's TLS state: the config handshakes use, the CAs it trusts, and the
/// admission rules read from the same registry state.
#[derive(Debug)]
pub struct OrgTls {
    pub org: OrgId,
    pub config: Arc<ServerConfig>,
    pub cas: Vec<ActiveCa>,
    /// The client verifier inside `config`, also used by the authorization dry run.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// Security policy, active CAs and revocations when the config was built: CONNECT
    /// decides with these, so it needs no store read.
    pub(crate) rules: OrgRules,
    /// The org's limits when the config was built (see `crate::limits`): a change
    /// rebuilds the config, so sessions see new limits through the cache.
    pub limits: OrgLimits,
    /// The org's network policy: checked right after SNI, before any certificate work.
    pub network: registry::network::NetworkRules,
}

impl OrgTls {
    /// What admission needs from a verified client chain (leaf first): identity,
    /// serial and expiry from one parse of the leaf, and the path the chain was
    /// verified along with the CA it ends at (see `chain.rs`). `None` for an empty
    /// chain; a leaf that does not parse has no identity (and is refused).
    pub(crate) fn peer_cert(&self, chain: &[CertificateDer<'_>]) -> Option<PeerCert> {
        let summary = cert::client_summary(chain.first()?);
        let (path, ca) = match chain::verified_path(chain, &self.cas) {
            Some((path, i)) => (path, self.cas.get(i)),
            None => (Vec::new(), None),
        };
        Some(PeerCert {
            identity: summary.as_ref().and_then(|s| s.identity.clone()),
            ca_id: ca.map(|c| c.id.clone()).unwrap_or_default(),
            ca_fingerprint: ca.map(|c| c.fingerprint.clone()).unwrap_or_default(),
            path,
            not_after: summary.map_or(time::PrimitiveDateTime::MAX.assume_utc(), |s| s.not_after),
            fingerprint: cert::fingerprint(chain.first()?),
        })
    }
}

impl chain::Anchor for ActiveCa {
    fn subject_raw(&self) -> &[u8] {
        &self.subject_raw
    }
    fn der(&self) -> &[u8] {
        &self.der
    }
}

fn subject_raw(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(c.subject().as_raw().to_vec())
}

/// Why an org's TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// SNI → org → cached config.
pub struct OrgTlsCache {
    registry: Arc<Registry>,
    provider: Arc<CryptoProvider>,
    configs: ArcSwap<HashMap<OrgId, Arc<OrgTls>>>,
    /// Bumped by every invalidation: a config whose build started before the last
    /// invalidation was built from older state and is not cached.
    generation: AtomicU64,
    /// The last config that built, per org: served when a rebuild fails, so a bad
    /// change never takes an org offline.
    last_good: Mutex<HashMap<OrgId, Arc<OrgTls>>>,
    /// Why the org's config last failed to build, until it builds again.
    errors: Mutex<HashMap<OrgId, String>>,
}

impl OrgTlsCache {
    /// An empty cache over `registry`. It does not listen for changes itself: the
    /// broker's one listener invalidates, then re-judges live sessions, in that order.
    pub fn new(registry: Arc<Registry>) -> Arc<OrgTlsCache> {
        Arc::new(OrgTlsCache {
            registry,
            provider: Arc::new(provider()),
            configs: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicU64::new(0),
            last_good: Mutex::default(),
            errors: Mutex::default(),
        })
    }

    /// The org an SNI name selects: `<org>.<domain>`, `<org>.<custom domain>` or an
    /// exact name on the org's active server certificate (see `registry::domains`).
    /// Answered from the registry's in-memory index, without a lock or a store read.
    pub fn org_for_sni(&self, sni: &str) -> Option<OrgId> {
        self.registry.org_for_host(sni)
    }

    /// The org's TLS state, building and caching it on first use. `Ok(None)` when the
    /// org does not exist.
    pub fn get(&self, org: &OrgId) -> Result<Option<Arc<OrgTls>>, TlsError> {
        if let Some(tls) = self.configs.load().get(org) {
            return Ok(Some(tls.clone()));
        }
        let started = self.generation.load(Ordering::SeqCst);
        let tls = match self.build(org) {
            Ok(Some(tls)) => Arc::new(tls),
            Ok(None) => {
                lock(&self.last_good).remove(org);
                lock(&self.errors).remove(org);
                return Ok(None);
            }
            Err(e) => {
                // Keep serving the org with its last good config, and say why.
                tracing::error!(%org, cause = %e, "cannot build the org's TLS config; serving its last good one");
                crate::metrics::tls_config_error(org.as_str());
                lock(&self.errors).insert(org.clone(), e.to_string());
                return match lock(&self.last_good).get(org) {
                    Some(good) => Ok(Some(good.clone())),
                    None => Err(e),
                };
            }
        };
        lock(&self.errors).remove(org);
        lock(&self.last_good).insert(org.clone(), tls.clone());
        // Cache it only if no invalidation came while it was built. The check runs inside
        // the compare-and-swap loop: an invalidation that removes the org after this
        // insert also removes this entry; one that bumped the generation first makes
        // the loop retry and skip.
        self.configs.rcu(|map| {
            let mut map = HashMap::clone(map);
            if self.generation.load(Ordering::SeqCst) == started {
                map.insert(org.clone(), tls.clone());
            }
            map
        });
        Ok(Some(tls))
    }

    /// Why the org's TLS config last failed to build (it is then served with its last
    /// good one); `None` when it is healthy.
    pub fn error(&self, org: &OrgId) -> Option<String> {
        lock(&self.errors).get(org).cloned()
    }

    /// The org's limits as the cache holds them, without building anything: `Some((limits,
    /// true))` from the current config (built after the last invalidation), `Some((limits,
    /// false))` from its last good one while no current one is cached, `None` when the
    /// org was never built.
    pub(crate) fn cached_limits(&self, org: &OrgId) -> Option<(OrgLimits, bool)> {
        if let Some(tls) = self.configs.load().get(org) {
            return Some((tls.limits, true));
        }
        lock(&self.last_good).get(org).map(|t| (t.limits, false))
    }

    /// Bumped by every invalidation (of any org): a reader that saw the same value
    /// before knows no cached config changed since.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forgets the org's config; the next handshake rebuilds it.
    pub fn invalidate(&self, org: &OrgId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.configs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(org);
            map
        });
    }

    fn build(&self, org: &OrgId) -> Result<Option<OrgTls>, TlsError> {
        let Some(material) = self.registry.tls_material(org)? else {
            return Ok(None);
        };
        let policy = match self.registry.security_policy(org) {
            Ok(p) => p,
            Err(registry::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let limits = match self.registry.org_limits(org) {
            Ok(l) => l,
            Err(registry::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let blocked = self.registry.blocked_identities(org)?;
        let revoked = Arc::new(Revoked::new(&self.registry.revoked_cert_list(org)?));
        let network = self.registry.network_rules(org)?;
        let topics = match self.registry.topic_policy(org) {
            Ok(t) => Arc::new(t),
            Err(registry::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Levels that admit tokens ask for a certificate without requiring one.
        let (cert_optional, _) = policy.loosest();
        let (chain, key) = match material.server {
            Some(server) => server,
            None => self.registry.platform_cert()?,
        };
        let chain: Vec<CertificateDer<'static>> =
            chain.into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));

        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        for (id, der, fingerprint) in material.cas {
            // A CA the registry accepted but webpki cannot use is skipped, not fatal:
            // the org's other CAs keep working.
            if let Err(e) = roots.add(CertificateDer::from(der.clone())) {
                tracing::warn!(%org, ca = %id, cause = %e, "CA certificate unusable as trust anchor");
                continue;
            }
            let subject_raw = subject_raw(&der).unwrap_or_default();
            cas.push(ActiveCa {
                id,
                fingerprint,
                der,
                subject_raw,
            });
        }
        let (crls, crl_errors) = Crls::new(&material.crls);
        for e in &crl_errors {
            tracing::warn!(%org, cause = %e, "CRL skipped");
        }
        let cas = Arc::new(cas);
        let crls = Arc::new(crls);
        let verifier: Arc<dyn ClientCertVerifier> = if roots.is_empty() {
            Arc::new(RejectAll::new(self.provider.clone(), !cert_optional))
        } else {
            // Revocation is checked by `Revoking` along the verified path (chain.rs),
            // not by webpki, which refuses CRLs that RFC 5280 allows.
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone());
            let builder = if cert_optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let inner = builder
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            Arc::new(Revoking {
                inner,
                cas: cas.clone(),
                crls: crls.clone(),
                revoked: revoked.clone(),
            })
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain, key)?;
        // The server's order (AES-128-GCM first, see `provider()`): the cheapest suite.
        config.ignore_client_order = true;
        // Stateless TLS 1.3 tickets: resumption without a per-config cache limit. Each
        // rebuilt config (any change to the org) gets a new ticket key, so a ticket never
        // outlives the CA, CRL or block state it was issued under.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        // One ticket per full handshake is enough for a device that reconnects (rustls
        // sends two by default: each costs an encryption and a record).
        config.send_tls13_tickets = 1;
        let rules = OrgRules {
            org: org.clone(),
            policy,
            topics,
            active_cas: cas.iter().map(|c| c.fingerprint.clone()).collect(),
            crls,
            blocked,
            revoked,
        };
        Ok(Some(OrgTls {
            org: org.clone(),
            config: Arc::new(config),
            cas: Arc::unwrap_or_clone(cas),
            verifier,
            rules,
            limits,
            network,
        }))
    }
}

/// ring's provider with AES-128-GCM-SHA256 preferred: SHA-256 for the handshake hash
/// and the cheaper AEAD, at no security cost for this use.
pub(crate) fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        }
    });
    p
}

/// webpki's verification, then revocation along the verified path (see `chain.rs`).
#[derive(Debug)]
struct Revoking {
    inner: Arc<dyn ClientCertVerifier>,
    cas: Arc<Vec<ActiveCa>>,
    crls: Arc<Crls>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for Revoking {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        match chain::verified_path(&chain, &self.cas) {
            Some((path, _)) if self.crls.revokes(&path) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some((path, i))
                if !self.revoked.is_empty()
                    && self.revoked.revokes(
                        &cert::fingerprint(end_entity),
                        self.cas.get(i).map_or("", |c| c.id.as_str()),
                        path.first().map_or("", |l| l.serial.as_str()),
                    ) =>
            {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some(_) => Ok(verified),
            // webpki found a path by signatures that name matching did not: refuse
            // rather than admit a client whose path certmq cannot check.
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verifier of an org with no active CA: asks for a certificate, admits none (and,
/// when the policy allows tokens, lets clients come without one).
#[derive(Debug)]
struct RejectAll {
    schemes: Vec<SignatureScheme>,
    mandatory: bool,
}

impl RejectAll {
    fn new(provider: Arc<CryptoProvider>, mandatory: bool) -> RejectAll {
        RejectAll {
            schemes: provider
                .signature_verification_algorithms
                .supported_schemes(),
            mandatory,
        }
    }
}

impl ClientCertVerifier for RejectAll {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no trusted CA".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no trusted CA".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
