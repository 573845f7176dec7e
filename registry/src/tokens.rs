//! Org-scoped API tokens (docs/contract.md, section 6): a bearer token that sees one org only.
//!
//! A token is `cmq_<id>_<secret>`: `id` is 16 hex characters (8 random bytes) and names
//! the record, `secret` is 64 hex characters (32 random bytes). The registry keeps only
//! the id, the org, a name and an HMAC-SHA256 of the whole token under a random 16-byte
//! salt; the token itself exists only in the answer to [`Registry::create_token`].
//!
//! Why a fast MAC and not a slow password hash: slow KDFs (Argon2, PBKDF2) exist to make
//! guessing *low-entropy* passwords expensive. The secret here has 256 random bits, so
//! no amount of guessing reaches it and one HMAC is enough; the salt makes two records
//! of the same token differ, so a leaked store cannot be matched against a token list.
//! Verification is [`ring::hmac::verify`], which compares in constant time.
//!
//! Store layout: `token/<org>/<id>` holds the record, `token-id/<id>` the org, so a
//! presented token is found by its id with two point reads.

use ring::hmac;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{new_id, Registry};
use crate::store::Op;

/// What every org token starts with (the platform admin token generated on first start
/// starts with it too, but has no second `_`).
pub const TOKEN_PREFIX: &str = "cmq_";
/// Tokens an org may hold at once; creating one more is a 409.
pub const MAX_TOKENS_PER_ORG: usize = 100;
const MAX_NAME_CHARS: usize = 100;
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// The stored record: never the token, only its salted MAC.
#[derive(Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    org: OrgId,
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// 16 random bytes, hex: the HMAC key.
    salt: String,
    /// HMAC-SHA256(salt, token), hex.
    mac: String,
}

/// An org token as the API lists it: no secret, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    pub id: String,
    pub org: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A token just created: the one moment its secret is known. Show it once, then drop it.
#[derive(Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// `cmq_<id>_<secret>`, for the `Authorization: Bearer` header.
    pub token: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("view", &self.view)
            .field("token", &"..")
            .finish()
    }
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> TokenView {
        TokenView {
            id: r.id,
            org: r.org,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

fn mac(salt: &[u8], token: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    hmac::sign(&key, token.as_bytes()).as_ref().to_vec()
}

/// The id of a well-formed org token, `None` for anything else (so a malformed bearer
/// value costs no store read).
fn token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then_some(id)
}

impl Registry {
    /// Creates a token for `org`. The answer carries the token; the store keeps its MAC.
    pub fn create_token(&self, org: &OrgId, name: &str) -> Result<NewToken> {
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::BadRequest(format!(
                "token name must be 1-{MAX_NAME_CHARS} characters"
            )));
        }
        crate::text::check("token name", name, MAX_NAME_CHARS)?;
        let id = new_id();
        let token = format!(
            "{TOKEN_PREFIX}{id}_{}",
            hex::encode(crate::seal::random_bytes::<32>())
        );
        let salt = crate::seal::random_bytes::<16>();
        let rec = TokenRecord {
            id: id.clone(),
            org: org.clone(),
            name: name.to_owned(),
            created_at: OffsetDateTime::now_utc(),
            salt: hex::encode(salt),
            mac: hex::encode(mac(&salt, &token)),
        };
        let _g = self.lock();
        self.get_org(org)?;
        if self.store.scan(&layout::tokens(org))?.len() >= MAX_TOKENS_PER_ORG {
            return Err(Error::Conflict(format!(
                "org {org} already has {MAX_TOKENS_PER_ORG} tokens; delete one first"
            )));
        }
        self.store.apply(vec![
            Self::put(layout::token(org, &id), &rec),
            Self::put(layout::token_index(&id), org),
        ])?;
        Ok(NewToken {
            view: rec.into(),
            token,
        })
    }

    /// The org's tokens, without secrets.
    pub fn list_tokens(&self, org: &OrgId) -> Result<Vec<TokenView>> {
        self.get_org(org)?;
        Ok(self
            .scan_json::<TokenRecord>(&layout::tokens(org))?
            .into_iter()
            .map(TokenView::from)
            .collect())
    }

    /// Revokes a token: the next request that presents it gets a 401.
    pub fn delete_token(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::token(org, id);
        if self.store.get(&key)?.is_none() {
            return Err(Error::NotFound(format!(
                "token {id} not found in org {org}"
            )));
        }
        self.store
            .apply(vec![Op::Delete(key), Op::Delete(layout::token_index(id))])?;
        Ok(())
    }

    /// The org token `presented` is, or `None` when it is not a live org token.
    pub fn authenticate_token(&self, presented: &str) -> Result<Option<TokenView>> {
        let Some(id) = token_id(presented) else {
            return Ok(None);
        };
        let Some(org) = self.get_json::<OrgId>(&layout::token_index(id))? else {
            return Ok(None);
        };
        let Some(rec) = self.get_json::<TokenRecord>(&layout::token(&org, id))? else {
            return Ok(None);
        };
        let (Ok(salt), Ok(expected)) = (hex::decode(&rec.salt), hex::decode(&rec.mac)) else {
            return Err(Error::Corrupt(layout::token(&org, id)));
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salt);
        Ok(hmac::verify(&key, presented.as_bytes(), &expected)
            .is_ok()
            .then(|| rec.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::registry;

    #[test]
    fn token_shapes() {
        let good = format!("cmq_{}_{}", "a".repeat(16), "0".repeat(64));
        assert_eq!(token_id(&good), Some("aaaaaaaaaaaaaaaa"));
        for bad in [
            "cmq_abc",
            "cmq_0123456789abcdef",
            &format!("cmq_{}_{}", "a".repeat(15), "0".repeat(64)),
            &format!("cmq_{}_{}", "a".repeat(16), "0".repeat(63)),
            &format!("cmq_{}_{}", "g".repeat(16), "0".repeat(64)),
            &format!("xyz_{}_{}", "a".repeat(16), "0".repeat(64)),
        ] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn create_authenticate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let beta = r.create_org("beta", "").unwrap().id;
        let t = r.create_token(&acme, " ops ").unwrap();
        assert_eq!(t.view.name, "ops");
        assert!(token_id(&t.token).is_some());
        assert!(!format!("{t:?}").contains(&t.token));

        assert_eq!(
            r.authenticate_token(&t.token).unwrap(),
            Some(t.view.clone())
        );
        // Right id, wrong secret.
        let mut flipped = t.token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(r.authenticate_token(&flipped).unwrap(), None);
        assert_eq!(r.authenticate_token("not-a-token").unwrap(), None);

        assert_eq!(r.list_tokens(&acme).unwrap(), vec![t.view.clone()]);
        assert!(r.list_tokens(&beta).unwrap().is_empty());
        assert!(matches!(
            r.delete_token(&beta, &t.view.id),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            r.create_token(&acme, ""),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            r.create_token(&acme, "a\nb"),
            Err(Error::BadRequest(_))
        ));

        r.delete_token(&acme, &t.view.id).unwrap();
        assert_eq!(r.authenticate_token(&t.token).unwrap(), None);

        // Deleting the org takes its tokens (record and index) along.
        let t2 = r.create_token(&acme, "ci").unwrap();
        r.delete_org(&acme).unwrap();
        assert_eq!(r.authenticate_token(&t2.token).unwrap(), None);
        assert!(r.store.scan("token").unwrap().is_empty());
    }

    #[test]
    fn only_a_salted_mac_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let a = r.create_token(&acme, "a").unwrap();
        let secret = a.token.rsplit('_').next().unwrap().to_owned();
        for (_, v) in r.store.scan("token").unwrap() {
            let text = String::from_utf8_lossy(&v);
            assert!(!text.contains(&secret), "the secret is in the store");
        }
        let rec: TokenRecord = r
            .get_json(&layout::token(&acme, &a.view.id))
            .unwrap()
            .unwrap();
        assert_eq!(rec.salt.len(), 32);
        assert_ne!(rec.mac, hex::encode(mac(&[0; 16], &a.token)));
    }

    #[test]
    fn tokens_per_org_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        for i in 0..MAX_TOKENS_PER_ORG {
            r.create_token(&acme, &format!("t{i}")).unwrap();
        }
        assert!(matches!(
            r.create_token(&acme, "one more"),
            Err(Error::Conflict(_))
        ));
    }
}
