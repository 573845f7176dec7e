//! Who may connect: the one admission decision.
//!
//! From what is known about a connection ([`Facts`]: the transport, the client
//! certificate TLS verified, the client id, the token) and the org's rules at that
//! moment ([`OrgRules`]: security policy, active CAs, revocations), [`decide`] answers
//! with an admitted [`Principal`] or a [`Refusal`] naming the [`Stage`] that refused.
//!
//! Three callers, one answer: the CONNECT of every session, the re-judgement of live
//! sessions after an org changes (`Broker::reconcile`), and the authorization dry run
//! (`authz.rs`). The function is pure — no store, no sockets, no clock — so the order
//! of the checks and what each says is unit-tested here; token verification, which
//! needs the store's salted hashes, comes in as a closure the caller provides.

use std::collections::HashSet;
use std::sync::Arc;

use registry::live::Stage;
use registry::{names, Identity, Level, OrgId, Registry, SecurityPolicy, TopicPolicy, Transport};

use crate::chain::{Crls, Link, Revoked};
use time::OffsetDateTime;

use crate::acl::Principal;

/// The username that announces token authentication (Watson's convention).
pub(crate) const TOKEN_USERNAME: &str = "use-token-auth";

/// A client certificate TLS verified for this org, as admission and the session
/// registry need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCert {
    /// The identity in its subject CN or an email SAN, if it carries one.
    pub identity: Option<Identity>,
    /// The org CA that admitted it.
    pub ca_id: String,
    pub ca_fingerprint: String,
    /// The path it was verified along, leaf first (see `chain.rs`): revocation is
    /// checked on every certificate of it.
    pub path: Vec<Link>,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub fingerprint: String,
}

impl PeerCert {
    /// The leaf's serial, lowercase hex with colons.
    pub(crate) fn serial(&self) -> &str {
        self.path.first().map_or("", |l| l.serial.as_str())
    }
}

/// An org's admission rules, as one consistent snapshot (the org's TLS state carries
/// the one its config was built from).
#[derive(Debug, Clone)]
pub(crate) struct OrgRules {
    pub org: OrgId,
    pub policy: SecurityPolicy,
    /// The org's topic policy: which rules decide topics, and in custom mode which
    /// client ids are admitted.
    pub topics: Arc<TopicPolicy>,
    /// SHA-256 fingerprints of the org's active CA certificates.
    pub active_cas: HashSet<String>,
    /// The org's CRLs (shared with the TLS verifier).
    pub crls: Arc<Crls>,
    /// Blocked identities.
    pub blocked: HashSet<Identity>,
    /// Single certificates revoked (shared with the TLS verifier).
    pub revoked: Arc<Revoked>,
}

/// What a token check found for the identity admission settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// No token was presented (or, for a live session, none admitted it).
    NotPresented,
    /// A token was presented and is the identity's current one (its version).
    Valid(OffsetDateTime),
    /// A token was presented and is wrong, or was replaced or deleted since.
    Invalid,
}

/// What is known about a connection when admission decides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub transport: Transport,
    /// The client certificate TLS verified, if one was presented.
    pub cert: Option<&'a PeerCert>,
    /// The client id; `None` only for a dry run that was not given one.
    pub client_id: Option<&'a str>,
}

/// An admitted client.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub principal: Principal,
    /// Set when a valid token was presented: the token's version.
    pub token_version: Option<OffsetDateTime>,
}

/// Why a client is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub stage: Stage,
    /// The rule that refused, in words (for the log, status events and the dry run).
    pub reason: String,
    /// A token was presented and is wrong: CONNACK 4 / 0x86 rather than 5 / 0x87.
    pub bad_credentials: bool,
}

fn refuse(stage: Stage, reason: String) -> Refusal {
    Refusal {
        stage,
        reason,
        bad_credentials: false,
    }
}

/// Decides whether a client with `facts` is admitted under `rules`. `token` checks the
/// presented token (if any) for the identity admission settled on.
///
/// The order is fixed: identity → client id → credentials against the security level
/// (a certificate counts only while its CA is active and its serial not revoked) →
/// block list. The first check that fails decides.
pub(crate) fn decide(
    rules: &OrgRules,
    facts: &Facts<'_>,
    token: impl FnOnce(&Identity) -> TokenCheck,
) -> Result<Admitted, Refusal> {
    let org = &rules.org;
    let identity = match (facts.cert, facts.client_id) {
        (Some(cert), _) => match &cert.identity {
            Some(i) => i.clone(),
            None => return Err(refuse(
                Stage::Identity,
                "the client certificate carries no identity (d:/g:/a:) in its CN or an email SAN"
                    .into(),
            )),
        },
        (None, Some(client_id)) => match names::parse_client_id(client_id) {
            Some((_, identity)) => identity,
            None => {
                return Err(refuse(
                    Stage::Identity,
                    format!(
                    "client id {client_id:?} is not an identity and no certificate was presented"
                ),
                ))
            }
        },
        (None, None) => {
            return Err(refuse(
                Stage::Identity,
                "neither a certificate nor a client id".into(),
            ))
        }
    };
    // The client id must be the one the identity implies in this org, or in custom
    // topic mode the one its rule asks for.
    if let Some(client_id) = facts.client_id {
        let rule = rules.topics.client_id_rule(&identity);
        if !rule.admits(&identity, org, client_id) {
            let expected = rule
                .expected(&identity, org)
                .unwrap_or_else(|| "any".into());
            return Err(refuse(
                Stage::ClientId,
                format!(
                    "client id {client_id:?} does not match identity {identity} (expected {expected:?})"
                ),
            ));
        }
    }
    let cert_problem = facts.cert.and_then(|c| {
        if !rules.active_cas.contains(&c.ca_fingerprint) {
            Some("the CA that admitted the certificate is no longer active in the org")
        } else if rules.crls.revokes(&c.path) {
            Some("a certificate of its chain is on its issuer's revocation list")
        } else if rules.revoked.revokes(&c.fingerprint, &c.ca_id, c.serial()) {
            Some("the certificate is revoked in the org (revoked-certs)")
        } else {
            None
        }
    });
    let cert_ok = facts.cert.is_some() && cert_problem.is_none();
    let token = token(&identity);
    let token_version = match token {
        TokenCheck::Valid(v) => Some(v),
        _ => None,
    };
    let level = rules.policy.level_for(&identity);
    if !level.admits(facts.transport, cert_ok, token_version.is_some()) {
        if let Some(problem) = cert_problem {
            return Err(refuse(Stage::Certificate, problem.into()));
        }
        let presented = match (facts.cert.is_some(), token) {
            (_, TokenCheck::Invalid) => "a wrong token",
            (true, _) => "a certificate without a valid token",
            (false, TokenCheck::Valid(_)) => "a valid token",
            (false, TokenCheck::NotPresented) => "a connection without certificate or token",
        };
        return Err(Refusal {
            stage: Stage::SecurityLevel,
            reason: format!(
                "security level {} does not admit {presented} over {}",
                level_name(level),
                match facts.transport {
                    Transport::Tls => "TLS",
                    Transport::Plain => "plain MQTT",
                }
            ),
            bad_credentials: token == TokenCheck::Invalid,
        });
    }
    // A device and a gateway of the same type and id publish in the same topic space,
    // so blocking either shuts out both.
    if let Some(blocked) = [Some(&identity), twin(&identity).as_ref()]
        .into_iter()
        .flatten()
        .find(|i| rules.blocked.contains(*i))
    {
        return Err(refuse(
            Stage::Blocked,
            format!("{blocked} is blocked in org {org}"),
        ));
    }
    let principal = Principal::new(
        org.clone(),
        identity,
        &rules.policy,
        &rules.topics,
        facts.client_id,
    );
    Ok(Admitted {
        principal,
        token_version,
    })
}

/// The identity that shares `identity`'s topic space: `g:T:I` for `d:T:I` and back.
fn twin(identity: &Identity) -> Option<Identity> {
    match identity {
        Identity::Device {
            device_type,
            device_id,
        } => Some(Identity::Gateway {
            gateway_type: device_type.clone(),
            gateway_id: device_id.clone(),
        }),
        Identity::Gateway {
            gateway_type,
            gateway_id,
        } => Some(Identity::Device {
            device_type: gateway_type.clone(),
            device_id: gateway_id.clone(),
        }),
        Identity::App { .. } => None,
    }
}

/// The token check of a CONNECT or a dry run: `token` (the password sent with username
/// [`TOKEN_USERNAME`]) against the identity's stored token. A store error counts as a
/// wrong token (fail closed).
pub(crate) fn presented_token<'a>(
    registry: &'a Registry,
    org: &'a OrgId,
    token: Option<&'a str>,
) -> impl FnOnce(&Identity) -> TokenCheck + 'a {
    move |identity| match token {
        None => TokenCheck::NotPresented,
        Some(t) => match registry.verify_device_token(org, identity, t) {
            Ok(Some(version)) => TokenCheck::Valid(version),
            Ok(None) | Err(_) => TokenCheck::Invalid,
        },
    }
}

/// The token check of a live session: the token that admitted it (`admitted_with`, its
/// version) still counts while it is the identity's current one.
pub(crate) fn current_token<'a>(
    registry: &'a Registry,
    org: &'a OrgId,
    admitted_with: Option<OffsetDateTime>,
) -> impl FnOnce(&Identity) -> TokenCheck + 'a {
    move |identity| match admitted_with {
        None => TokenCheck::NotPresented,
        Some(v) => match registry.device_token_version(org, identity) {
            Ok(Some(current)) if current == v => TokenCheck::Valid(v),
            _ => TokenCheck::Invalid,
        },
    }
}

/// A level as the security policy API names it.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TlsClientCert => "tls_client_cert",
        Level::TlsClientCertOrToken => "tls_client_cert_or_token",
        Level::TlsToken => "tls_token",
        Level::TlsOptional => "tls_optional",
        Level::TlsClientCertAndToken => "tls_client_cert_and_token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId::try_from("acme").unwrap()
    }

    fn rules(level: Level) -> OrgRules {
        OrgRules {
            org: org(),
            policy: SecurityPolicy {
                level,
                ..Default::default()
            },
            topics: Arc::default(),
            active_cas: HashSet::from(["ca1".to_owned()]),
            crls: Arc::default(),
            blocked: HashSet::new(),
            revoked: Arc::default(),
        }
    }

    fn cert(identity: &str) -> PeerCert {
        PeerCert {
            identity: Identity::parse(identity).ok(),
            ca_id: "id1".into(),
            ca_fingerprint: "ca1".into(),
            path: vec![Link {
                issuer: [1; 32],
                serial: "01".into(),
            }],
            not_after: OffsetDateTime::UNIX_EPOCH,
            fingerprint: "fp1".into(),
        }
    }

    fn tls<'a>(cert: Option<&'a PeerCert>, client_id: &'a str) -> Facts<'a> {
        Facts {
            transport: Transport::Tls,
            cert,
            client_id: Some(client_id),
        }
    }

    const V: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn stage(r: Result<Admitted, Refusal>) -> Stage {
        match r {
            Ok(_) => Stage::Admitted,
            Err(r) => r.stage,
        }
    }

    #[test]
    fn a_certificate_admits_its_own_client_id_only() {
        let c = cert("d:sensor:dev1");
        let r = rules(Level::TlsClientCert);
        let ok = decide(&r, &tls(Some(&c), "d:acme:sensor:dev1"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap();
        assert_eq!(ok.principal.identity.to_string(), "d:sensor:dev1");
        assert_eq!(ok.token_version, None);
        let wrong = decide(&r, &tls(Some(&c), "d:acme:sensor:dev2"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap_err();
        assert_eq!(wrong.stage, Stage::ClientId);
        assert!(
            wrong.reason.contains("expected \"d:acme:sensor:dev1\""),
            "{}",
            wrong.reason
        );
        // Another org's client id is a mismatch too.
        let other = tls(Some(&c), "d:other:sensor:dev1");
        assert_eq!(
            stage(decide(&r, &other, |_| TokenCheck::NotPresented)),
            Stage::ClientId
        );
    }

    #[test]
    fn a_certificate_without_identity_is_refused_before_anything_else() {
        let c = cert("not an identity");
        let r = rules(Level::TlsClientCert);
        let e = decide(&r, &tls(Some(&c), "d:acme:sensor:dev1"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap_err();
        assert_eq!(e.stage, Stage::Identity);
    }

    #[test]
    fn security_levels_decide_which_credentials_count() {
        let c = cert("d:sensor:dev1");
        let id = "d:acme:sensor:dev1";
        // (level, certificate?, token) → admitted?
        let cases = [
            (
                Level::TlsClientCert,
                true,
                TokenCheck::NotPresented,
                Stage::Admitted,
            ),
            (
                Level::TlsClientCert,
                false,
                TokenCheck::Valid(V),
                Stage::SecurityLevel,
            ),
            (
                Level::TlsClientCertOrToken,
                false,
                TokenCheck::Valid(V),
                Stage::Admitted,
            ),
            (
                Level::TlsClientCertOrToken,
                true,
                TokenCheck::Invalid,
                Stage::Admitted,
            ),
            (
                Level::TlsClientCertOrToken,
                false,
                TokenCheck::Invalid,
                Stage::SecurityLevel,
            ),
            // The bug the dry run had: a certificate alone at tls_token.
            (
                Level::TlsToken,
                true,
                TokenCheck::NotPresented,
                Stage::SecurityLevel,
            ),
            (Level::TlsToken, true, TokenCheck::Valid(V), Stage::Admitted),
            (
                Level::TlsOptional,
                false,
                TokenCheck::Valid(V),
                Stage::Admitted,
            ),
        ];
        for (level, with_cert, token, want) in cases {
            let facts = tls(with_cert.then_some(&c), id);
            let got = decide(&rules(level), &facts, |_| token);
            assert_eq!(
                stage(got.clone()),
                want,
                "{level:?} cert={with_cert} {token:?}"
            );
            if let Err(r) = got {
                assert_eq!(r.bad_credentials, token == TokenCheck::Invalid);
            }
        }
    }

    #[test]
    fn plain_mqtt_needs_tls_optional_and_a_token() {
        let plain = Facts {
            transport: Transport::Plain,
            cert: None,
            client_id: Some("d:acme:sensor:dev1"),
        };
        let got = |level| stage(decide(&rules(level), &plain, |_| TokenCheck::Valid(V)));
        assert_eq!(got(Level::TlsOptional), Stage::Admitted);
        assert_eq!(got(Level::TlsClientCertOrToken), Stage::SecurityLevel);
        let e = decide(&rules(Level::TlsOptional), &plain, |_| {
            TokenCheck::NotPresented
        })
        .unwrap_err();
        assert!(
            e.reason.contains("without certificate or token"),
            "{}",
            e.reason
        );
        let garbage = Facts {
            client_id: Some("whoever"),
            ..plain
        };
        let e = decide(&rules(Level::TlsOptional), &garbage, |_| {
            TokenCheck::Valid(V)
        });
        assert_eq!(stage(e), Stage::Identity);
    }

    #[test]
    fn an_inactive_ca_or_a_revoked_serial_withdraws_the_certificate() {
        let c = cert("d:sensor:dev1");
        let id = "d:acme:sensor:dev1";
        let mut r = rules(Level::TlsClientCert);
        r.active_cas.clear();
        let e = decide(&r, &tls(Some(&c), id), |_| TokenCheck::NotPresented).unwrap_err();
        assert_eq!(e.stage, Stage::Certificate);
        assert!(e.reason.contains("no longer active"));

        let mut r = rules(Level::TlsClientCert);
        Arc::make_mut(&mut r.crls).insert([1; 32], "01");
        let e = decide(&r, &tls(Some(&c), id), |_| TokenCheck::NotPresented).unwrap_err();
        assert_eq!(e.stage, Stage::Certificate);
        // A valid token still admits where the level accepts tokens.
        r.policy.level = Level::TlsClientCertOrToken;
        assert!(decide(&r, &tls(Some(&c), id), |_| TokenCheck::Valid(V)).is_ok());

        // One certificate revoked, by fingerprint or by CA and serial.
        for rec in [(Some("fp1"), "other", "99"), (None, "id1", "01")] {
            let mut r = rules(Level::TlsClientCert);
            r.revoked = Arc::new(Revoked::new(&[registry::revoked_certs::RevokedCert {
                id: "r".into(),
                fingerprint_sha256: rec.0.map(str::to_owned),
                ca_id: rec.1.into(),
                serial: rec.2.into(),
                identity: None,
                reason: String::new(),
                created_at: V,
            }]));
            let e = decide(&r, &tls(Some(&c), id), |_| TokenCheck::NotPresented).unwrap_err();
            assert_eq!(e.stage, Stage::Certificate);
            assert!(e.reason.contains("revoked-certs"), "{}", e.reason);
        }
    }

    #[test]
    fn certificate_and_token_needs_both() {
        let c = cert("d:sensor:dev1");
        let id = "d:acme:sensor:dev1";
        let r = rules(Level::TlsClientCertAndToken);
        assert!(decide(&r, &tls(Some(&c), id), |_| TokenCheck::Valid(V)).is_ok());
        let e = decide(&r, &tls(Some(&c), id), |_| TokenCheck::NotPresented).unwrap_err();
        assert_eq!(e.stage, Stage::SecurityLevel);
        assert!(
            e.reason.contains("tls_client_cert_and_token"),
            "{}",
            e.reason
        );
        let e = decide(&r, &tls(None, id), |_| TokenCheck::Valid(V)).unwrap_err();
        assert_eq!(e.stage, Stage::SecurityLevel);
    }

    #[test]
    fn a_blocked_identity_is_refused_whatever_its_credentials() {
        let c = cert("d:sensor:dev1");
        let mut r = rules(Level::TlsClientCertOrToken);
        r.blocked.insert(Identity::parse("d:sensor:dev1").unwrap());
        let e = decide(&r, &tls(Some(&c), "d:acme:sensor:dev1"), |_| {
            TokenCheck::Valid(V)
        })
        .unwrap_err();
        assert_eq!(e.stage, Stage::Blocked);
        // The gateway with the same type and id publishes as that device: out too.
        let g = cert("g:sensor:dev1");
        let e = decide(&r, &tls(Some(&g), "g:acme:sensor:dev1"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap_err();
        assert_eq!(e.stage, Stage::Blocked);
        assert!(e.reason.contains("d:sensor:dev1"), "{}", e.reason);
    }

    #[test]
    fn the_principal_carries_gateway_scope_and_scalable_instances() {
        let mut r = rules(Level::TlsClientCert);
        r.policy
            .gateway_device_types
            .insert("gw".into(), vec!["sensor".into()]);
        let g = cert("g:gw:g1");
        let a = decide(&r, &tls(Some(&g), "g:acme:gw:g1"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap();
        assert_eq!(
            a.principal.gateway_scope.as_deref().map(|s| s.len()),
            Some(1)
        );
        let app = cert("a:dash");
        let a = decide(&r, &tls(Some(&app), "A:acme:dash:i1"), |_| {
            TokenCheck::NotPresented
        })
        .unwrap();
        assert!(a.principal.scalable);
    }

    #[test]
    fn custom_topic_rules_decide_the_client_id() {
        let mut r = rules(Level::TlsClientCert);
        r.topics = Arc::new(
            serde_json::from_str(
                r###"{"mode":"custom","rules":[
                    {"who":"a:*","client_id":"*","publish":["#"]},
                    {"who":"d:*:*","client_id":"{type}-{id}"},
                    {"who":"g:*:*"}]}"###,
            )
            .unwrap(),
        );
        let none = |_: &Identity| TokenCheck::NotPresented;
        let app = cert("a:paho");
        for id in ["myclientid", "", "a:other:paho"] {
            assert!(decide(&r, &tls(Some(&app), id), none).is_ok(), "{id:?}");
        }
        let dev = cert("d:sensor:dev1");
        assert!(decide(&r, &tls(Some(&dev), "sensor-dev1"), none).is_ok());
        let e = decide(&r, &tls(Some(&dev), "d:acme:sensor:dev1"), none).unwrap_err();
        assert_eq!(e.stage, Stage::ClientId);
        assert!(
            e.reason.contains("expected \"sensor-dev1\""),
            "{}",
            e.reason
        );
        // No client_id in the rule: the Watson one.
        let gw = cert("g:gw:g1");
        assert!(decide(&r, &tls(Some(&gw), "g:acme:gw:g1"), none).is_ok());
        assert_eq!(
            stage(decide(&r, &tls(Some(&gw), "g1"), none)),
            Stage::ClientId
        );
    }
}
