//! Server certificate upload rules, one test per rule family. Certificates are minted
//! with rcgen; the key and container formats only OpenSSL writes (SEC1, PKCS#1,
//! encrypted PKCS#8, legacy PEM encryption, PKCS#12) come from the `openssl` command.

use std::path::Path;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};

use super::*;
use crate::registry::tests::{registry, walk};

/// The host name of org `acme` under the test registry's base domain.
pub(crate) const HOST: &str = "acme.messaging.localhost";

/// A test CA (root or intermediate) that signs server leaves and CSRs.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(365);
    p
}

/// A valid server leaf for [`HOST`]: SAN, serverAuth, valid from an hour ago for 90 days.
pub(crate) fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, HOST);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(90);
    p
}

impl Ca {
    pub(crate) fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `key` from [`leaf_params`] changed by `edit`, PEM.
    pub(crate) fn leaf(
        &self,
        key: &impl PublicKeyData,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> String {
        let mut p = leaf_params();
        edit(&mut p);
        p.signed_by(key, &self.issuer).unwrap().pem()
    }

    /// Signs a PKCS#10 CSR as a CA would, keeping its subject and requested extensions;
    /// `edit` may change them first.
    pub(crate) fn sign_csr(
        &self,
        csr_pem: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> String {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = OffsetDateTime::now_utc();
        csr.params.not_before = now - Duration::hours(1);
        csr.params.not_after = now + Duration::days(90);
        edit(&mut csr.params);
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// An empty CRL of this CA, issued a minute ago.
    pub(crate) fn crl(&self) -> String {
        let now = OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(7),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// Runs `openssl` in `dir`; its stdout. Panics when it fails.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed by these tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), contents).unwrap();
}

fn pem(chain: &str, key: &str, passphrase: Option<&str>) -> UploadServerCert {
    UploadServerCert::Pem {
        certificate: chain.to_owned(),
        private_key: key.to_owned(),
        passphrase: passphrase.map(str::to_owned),
    }
}

/// The rule a refused upload broke.
fn rule_of(r: Result<NewServerCert>) -> (Rule, String) {
    match r {
        Err(Error::Rejected(e)) => (e.rule, e.message),
        other => panic!("expected a 422, got {other:?}"),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    r: Registry,
    org: OrgId,
    root: Ca,
    int: Ca,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(&dir.path().join("store"));
        let org = r.create_org("acme", "").unwrap().id;
        let root = Ca::root("Test Root");
        let int = root.intermediate("Test Intermediate");
        Fixture {
            dir,
            r,
            org,
            root,
            int,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh P-256 key and its leaf + intermediate chain.
    fn ec_pair(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let chain = format!("{}{}", self.int.leaf(&key, |_| {}), self.int.pem);
        (chain, key.serialize_pem())
    }

    fn upload(&self, u: UploadServerCert) -> Result<NewServerCert> {
        self.r.upload_server_cert(&self.org, u)
    }

    /// Activates `id` and checks the broker gets the leaf's key back, in PKCS#8.
    fn assert_serves(&self, id: &str) {
        self.r.activate_server_cert(&self.org, id).unwrap();
        let (chain, key) = self
            .r
            .tls_material(&self.org)
            .unwrap()
            .unwrap()
            .server
            .unwrap();
        let loaded = keys::load(&key).expect("the stored key is PKCS#8 ring can load");
        assert_eq!(public_key_of(&chain[0]), loaded.public);
    }
}

#[test]
fn wildcards_cover_exactly_one_label() {
    assert!(covers("acme.messaging.localhost", HOST));
    assert!(covers("ACME.Messaging.localhost.", HOST));
    assert!(covers("*.messaging.localhost", HOST));
    assert!(!covers("*.localhost", HOST));
    assert!(!covers("*.acme.messaging.localhost", HOST));
    assert!(!covers("beta.messaging.localhost", HOST));
    assert!(!covers("*.messaging.localhost", "messaging.localhost"));
}

#[test]
fn accepts_every_pem_key_format_and_serves_it() {
    let f = Fixture::new();
    let dir = f.path();

    // PKCS#8, as rcgen writes it.
    let (chain, key) = f.ec_pair();
    let up = f.upload(pem(&chain, &key, None)).unwrap();
    assert!(!up.cert.active, "uploads are stored inactive");
    assert_eq!(up.cert.origin, "uploaded");
    assert!(up.notes.is_empty(), "{:?}", up.notes);
    assert_eq!(
        cert::read_chain(up.cert.pem.as_bytes()).unwrap().len(),
        2,
        "leaf and intermediate"
    );
    f.assert_serves(&up.cert.id);

    // SEC1 `EC PRIVATE KEY`.
    let (chain, key) = f.ec_pair();
    write(dir, "ec.pem", &key);
    let sec1 = String::from_utf8(openssl(dir, &["pkey", "-in", "ec.pem", "-traditional"])).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    f.assert_serves(&f.upload(pem(&chain, &sec1, None)).unwrap().cert.id);

    // `openssl ecparam -genkey` output: EC PARAMETERS, then the SEC1 key.
    let params_and_key = openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey"]);
    write(dir, "ecp.pem", &params_and_key);
    let pkcs8 = String::from_utf8(openssl(dir, &["pkey", "-in", "ecp.pem"])).unwrap();
    let kp = KeyPair::from_pem(&pkcs8).unwrap();
    let chain = f.int.leaf(&kp, |_| {});
    let params_and_key = String::from_utf8(params_and_key).unwrap();
    assert!(params_and_key.contains("EC PARAMETERS"));
    f.upload(pem(&chain, &params_and_key, None)).unwrap();

    // P-384.
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let chain = f.int.leaf(&kp, |_| {});
    f.assert_serves(
        &f.upload(pem(&chain, &kp.serialize_pem(), None))
            .unwrap()
            .cert
            .id,
    );

    // RSA 2048 as PKCS#8 and as PKCS#1 `RSA PRIVATE KEY`.
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    let rsa_pkcs8 = std::fs::read_to_string(dir.join("rsa.pem")).unwrap();
    let kp = KeyPair::from_pem(&rsa_pkcs8).unwrap();
    let chain = f.int.leaf(&kp, |_| {});
    let up = f.upload(pem(&chain, &rsa_pkcs8, None)).unwrap();
    assert_eq!(up.cert.details.key_type, "RSA 2048");
    f.assert_serves(&up.cert.id);
    let pkcs1 =
        String::from_utf8(openssl(dir, &["pkey", "-in", "rsa.pem", "-traditional"])).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let chain = f.int.leaf(&kp, |p| {
        p.distinguished_name
            .push(DnType::OrganizationName, "PKCS#1")
    });
    f.assert_serves(&f.upload(pem(&chain, &pkcs1, None)).unwrap().cert.id);
}

#[test]
fn encrypted_keys_need_the_right_passphrase() {
    let f = Fixture::new();
    let dir = f.path();
    let (chain, key) = f.ec_pair();
    write(dir, "k.pem", &key);
    let enc = |args: &[&str]| {
        let mut all = vec!["pkcs8", "-topk8", "-in", "k.pem", "-passout", "pass:s3cret"];
        all.extend_from_slice(args);
        String::from_utf8(openssl(dir, &all)).unwrap()
    };

    let aes = enc(&["-v2", "aes-256-cbc"]);
    assert!(aes.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let (rule, msg) = rule_of(f.upload(pem(&chain, &aes, Some("wrong"))));
    assert_eq!(rule, Rule::BadPassphrase, "{msg}");
    let (rule, msg) = rule_of(f.upload(pem(&chain, &aes, None)));
    assert_eq!(rule, Rule::BadPassphrase, "{msg}");
    assert!(msg.contains("passphrase"), "{msg}");
    let up = f.upload(pem(&chain, &aes, Some("s3cret"))).unwrap();
    f.assert_serves(&up.cert.id);

    // PBES2 with 3DES decrypts too (same leaf again: a 409 proves the key was read).
    let des3 = enc(&["-v2", "des3"]);
    assert!(matches!(
        f.upload(pem(&chain, &des3, Some("s3cret"))),
        Err(Error::Conflict(_))
    ));

    // PBES1 and OpenSSL's legacy PEM encryption are refused with a way out.
    let pbes1 = enc(&["-v1", "PBE-SHA1-3DES"]);
    let (rule, msg) = rule_of(f.upload(pem(&chain, &pbes1, Some("s3cret"))));
    assert_eq!(rule, Rule::UnsupportedKeyFormat, "{msg}");
    let legacy = String::from_utf8(openssl(
        dir,
        &[
            "pkey",
            "-in",
            "k.pem",
            "-traditional",
            "-aes256",
            "-passout",
            "pass:s3cret",
        ],
    ))
    .unwrap();
    assert!(legacy.contains("Proc-Type: 4,ENCRYPTED"));
    let (rule, msg) = rule_of(f.upload(pem(&chain, &legacy, Some("s3cret"))));
    assert_eq!(rule, Rule::UnsupportedKeyFormat);
    assert_eq!(Rule::UnsupportedKeyFormat.code(), "unsupported_key_format");
    assert!(msg.contains("openssl pkcs8 -topk8"), "{msg}");
}

#[test]
fn key_must_belong_to_the_leaf() {
    let f = Fixture::new();
    let (chain, _) = f.ec_pair();
    let (_, other_key) = f.ec_pair();
    let (rule, msg) = rule_of(f.upload(pem(&chain, &other_key, None)));
    assert_eq!(rule, Rule::KeyMismatch);
    assert_eq!(rule.code(), "key_mismatch");
    assert!(msg.contains(HOST), "{msg}");
}

#[test]
fn chain_out_of_order_is_reordered_and_a_broken_chain_refused() {
    let f = Fixture::new();
    let key = KeyPair::generate().unwrap();
    let leaf = f.int.leaf(&key, |_| {});

    // Reversed, root included: stored leaf → intermediate → root, with a note.
    let reversed = format!("{}{}{}", f.root.pem, f.int.pem, leaf);
    let up = f
        .upload(pem(&reversed, &key.serialize_pem(), None))
        .unwrap();
    let stored = cert::read_chain(up.cert.pem.as_bytes()).unwrap();
    assert_eq!(
        stored,
        cert::read_chain(format!("{leaf}{}{}", f.int.pem, f.root.pem).as_bytes()).unwrap()
    );
    assert_eq!(up.notes.len(), 1, "{:?}", up.notes);
    assert!(up.notes[0].contains("leaf-first"), "{:?}", up.notes);
    assert_eq!(up.cert.details.dns_names, vec![HOST]);
    f.assert_serves(&up.cert.id);

    // Duplicates are dropped, with a note.
    let key = KeyPair::generate().unwrap();
    let leaf = f.int.leaf(&key, |_| {});
    let doubled = format!("{leaf}{}{}", f.int.pem, f.int.pem);
    let up = f.upload(pem(&doubled, &key.serialize_pem(), None)).unwrap();
    assert_eq!(cert::read_chain(up.cert.pem.as_bytes()).unwrap().len(), 2);
    assert!(up.notes[0].contains("duplicate"), "{:?}", up.notes);

    // An intermediate that did not issue the leaf.
    let stranger = Ca::root("Stranger Root").intermediate("Stranger Intermediate");
    let key = KeyPair::generate().unwrap();
    let leaf = f.int.leaf(&key, |_| {});
    let broken = format!("{leaf}{}", stranger.pem);
    let (rule, msg) = rule_of(f.upload(pem(&broken, &key.serialize_pem(), None)));
    assert_eq!(rule, Rule::ChainOrder);
    assert_eq!(rule.code(), "chain_order");
    assert!(msg.contains("is not issued by"), "{msg}");
    assert!(msg.contains("Stranger Intermediate"), "{msg}");

    // A gap: leaf and root without the intermediate between them.
    let gap = format!("{leaf}{}", f.root.pem);
    let (rule, _) = rule_of(f.upload(pem(&gap, &key.serialize_pem(), None)));
    assert_eq!(rule, Rule::ChainOrder);

    // Two leaves.
    let (other_chain, _) = f.ec_pair();
    let two = format!("{leaf}{other_chain}");
    let (rule, _) = rule_of(f.upload(pem(&two, &key.serialize_pem(), None)));
    assert_eq!(rule, Rule::ChainOrder);
}

#[test]
fn leaf_validity_names_and_usage_rules() {
    let f = Fixture::new();
    let key = KeyPair::generate().unwrap();
    let key_pem = key.serialize_pem();
    let check = |edit: fn(&mut CertificateParams), want: Rule| {
        let chain = format!("{}{}", f.int.leaf(&key, edit), f.int.pem);
        let (rule, msg) = rule_of(f.upload(pem(&chain, &key_pem, None)));
        assert_eq!(rule, want, "{msg}");
        msg
    };
    check(
        |p| {
            let now = OffsetDateTime::now_utc();
            p.not_before = now - Duration::days(30);
            p.not_after = now - Duration::days(1);
        },
        Rule::Expired,
    );
    check(
        |p| {
            let now = OffsetDateTime::now_utc();
            p.not_before = now + Duration::days(1);
            p.not_after = now + Duration::days(30);
        },
        Rule::NotYetValid,
    );
    let msg = check(
        |p| {
            p.subject_alt_names = vec![rcgen::SanType::DnsName(
                "beta.messaging.localhost".try_into().unwrap(),
            )]
        },
        Rule::HostnameMismatch,
    );
    assert!(
        msg.contains(HOST) && msg.contains("beta.messaging.localhost"),
        "{msg}"
    );
    check(
        |p| p.subject_alt_names = vec![rcgen::SanType::DnsName("*.localhost".try_into().unwrap())],
        Rule::HostnameMismatch,
    );
    // A CN alone does not count: clients match the SAN only.
    check(|p| p.subject_alt_names.clear(), Rule::HostnameMismatch);
    check(
        |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
        Rule::LeafIsCa,
    );
    check(
        |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        Rule::NotForServerAuth,
    );
    assert_eq!(Rule::HostnameMismatch.code(), "hostname_mismatch");
    assert_eq!(Rule::LeafIsCa.code(), "leaf_is_ca");

    // A wildcard for the base domain covers other orgs' host names: refused
    // (docs/security.md); one under the org's own host name is fine.
    let wildcard = |name: &str| {
        let name = name.to_owned();
        f.int.leaf(&key, move |p| {
            p.subject_alt_names = vec![
                rcgen::SanType::DnsName(HOST.try_into().unwrap()),
                rcgen::SanType::DnsName(name.try_into().unwrap()),
            ]
        })
    };
    let chain = wildcard("*.messaging.localhost");
    assert!(matches!(
        f.upload(pem(&chain, &key_pem, None)),
        Err(Error::NameTaken(m)) if m.contains("*.messaging.localhost")
    ));
    let chain = wildcard("*.acme.messaging.localhost");
    f.upload(pem(&chain, &key_pem, None)).unwrap();
}

#[test]
fn rsa_1024_leaf_is_weak() {
    let f = Fixture::new();
    let dir = f.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "30",
            "-subj",
            "/CN=acme.messaging.localhost",
            "-addext",
            "subjectAltName=DNS:acme.messaging.localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("c.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("k.pem")).unwrap();
    let (rule, msg) = rule_of(f.upload(pem(&chain, &key, None)));
    assert_eq!(rule, Rule::WeakKey, "{msg}");
    assert_eq!(rule.code(), "weak_key");
}

#[test]
fn pkcs12_modern_and_legacy_with_right_and_wrong_password() {
    let f = Fixture::new();
    let dir = f.path();
    write(dir, "int.pem", &f.int.pem);
    let export = |name: &str, legacy: bool| -> Option<Vec<u8>> {
        let key = KeyPair::generate().unwrap();
        write(dir, &format!("{name}.key"), key.serialize_pem());
        write(dir, &format!("{name}.crt"), f.int.leaf(&key, |_| {}));
        let (k, c, out) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("{name}.p12"),
        );
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            &k,
            "-in",
            &c,
            "-certfile",
            "int.pem",
            "-passout",
            "pass:pw",
            "-out",
            &out,
        ];
        if legacy {
            args.push("-legacy");
        }
        let ok = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        ok.then(|| std::fs::read(dir.join(&out)).unwrap())
    };
    let p12 = |data: &[u8], pw: &str| UploadServerCert::Pkcs12 {
        data: data.to_vec(),
        password: pw.into(),
    };

    // OpenSSL 3's default: PBES2, AES-256-CBC, HMAC-SHA256.
    let modern = export("modern", false).expect("openssl pkcs12 -export");
    let (rule, msg) = rule_of(f.upload(p12(&modern, "nope")));
    assert_eq!(rule, Rule::BadPassphrase, "{msg}");
    assert_eq!(rule.code(), "bad_passphrase");
    let up = f.upload(p12(&modern, "pw")).unwrap();
    assert_eq!(cert::read_chain(up.cert.pem.as_bytes()).unwrap().len(), 2);
    f.assert_serves(&up.cert.id);

    // `-legacy`: RC2-40 certificates, 3DES key, SHA-1 MAC.
    match export("legacy", true) {
        Some(legacy) => {
            assert_eq!(
                rule_of(f.upload(p12(&legacy, "nope"))).0,
                Rule::BadPassphrase
            );
            f.assert_serves(&f.upload(p12(&legacy, "pw")).unwrap().cert.id);
        }
        None => eprintln!("openssl pkcs12 -legacy unavailable here; skipped"),
    }

    for bad in [
        b"garbage".to_vec(),
        Vec::new(),
        modern[..modern.len() / 2].to_vec(),
        f.int.pem.clone().into_bytes(),
    ] {
        let (rule, msg) = rule_of(f.upload(p12(&bad, "pw")));
        assert_eq!(rule, Rule::MalformedPkcs12, "{msg}");
    }
    assert_eq!(Rule::MalformedPkcs12.code(), "malformed_pkcs12");
}

#[test]
fn garbage_truncated_and_misplaced_pem() {
    let f = Fixture::new();
    let (chain, key) = f.ec_pair();
    // Cut inside the base64 of the second certificate.
    let truncated = &chain[..chain.find("-----END").unwrap() + 100];
    let cases = [
        ("garbage", key.as_str(), Rule::NotPemOrDer),
        (truncated, key.as_str(), Rule::NotPemOrDer),
        (chain.as_str(), "garbage", Rule::NotPemOrDer),
        (chain.as_str(), &key[..key.len() / 2], Rule::NotPemOrDer),
        (chain.as_str(), chain.as_str(), Rule::NotPemOrDer),
        (chain.as_str(), "", Rule::NotPemOrDer),
    ];
    for (c, k, want) in cases {
        let (rule, msg) = rule_of(f.upload(pem(c, k, None)));
        assert_eq!(rule, want, "{msg}");
    }
    let both = format!("{key}{key}");
    let (rule, msg) = rule_of(f.upload(pem(&chain, &both, None)));
    assert_eq!(rule, Rule::NotPemOrDer);
    assert!(msg.contains("2 private keys"), "{msg}");
}

#[test]
fn same_leaf_twice_is_a_conflict_and_org_must_exist() {
    let f = Fixture::new();
    let (chain, key) = f.ec_pair();
    f.upload(pem(&chain, &key, None)).unwrap();
    assert!(matches!(
        f.upload(pem(&chain, &key, None)),
        Err(Error::Conflict(_))
    ));
    let nope = OrgId::try_from("nope").unwrap();
    assert!(matches!(
        f.r.upload_server_cert(&nope, pem(&chain, &key, None)),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn uploaded_key_is_sealed_at_rest() {
    let f = Fixture::new();
    let (chain, key) = f.ec_pair();
    let up = f.upload(pem(&chain, &key, None)).unwrap();
    f.r.activate_server_cert(&f.org, &up.cert.id).unwrap();
    let pkcs8 = f.r.tls_material(&f.org).unwrap().unwrap().server.unwrap().1;
    let scalar = {
        use pkcs8::der::Decode;
        let info = pkcs8::PrivateKeyInfoRef::from_der(&pkcs8).unwrap();
        sec1::EcPrivateKey::from_der(info.private_key.as_bytes())
            .unwrap()
            .private_key
            .to_vec()
    };
    let store = f.path().join("store");
    drop(f.r);
    for file in walk(&store) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()),
            "PKCS#8 key in {}",
            file.display()
        );
        // Nor the bare private scalar inside it.
        assert!(!bytes.windows(scalar.len()).any(|w| w == scalar.as_slice()));
    }
}
