//! The one rule for free text people type and other people read: org display names,
//! CA descriptions, org token names, block reasons, CSR subject fields, and (with a
//! length rule of their own) device tokens. See docs/security.md, "Names and free text".
//!
//! Why: these strings are shown in the console, in API answers, in logs and in
//! terminals. A NUL or another control character (Unicode category Cc) can cut a
//! string short in C tools or move a terminal's cursor; a bidi control (U+202A–U+202E,
//! U+2066–U+2069, U+200E/U+200F) makes text display in another order than it is
//! stored, so `Acme\u{202e}gpj.exe` reads differently than it matches. Neither belongs in
//! a name, so both are refused at the door, in one function, with a message naming the
//! field and the character.

use crate::error::{Error, Result};

/// Whether `c` may not appear in free text: a control character (Unicode Cc) or a bidi
/// control.
pub fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// The first forbidden character of `s` and its position in characters.
pub fn first_forbidden(s: &str) -> Option<(usize, char)> {
    s.chars().enumerate().find(|&(_, c)| is_forbidden(c))
}

/// Checks the free-text field `field`: at most `max_chars` characters, none of them
/// [forbidden](is_forbidden). The error names the field, the rule and the character.
pub fn check(field: &str, value: &str, max_chars: usize) -> Result<()> {
    if value.chars().count() > max_chars {
        return Err(Error::BadRequest(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if let Some((at, c)) = first_forbidden(value) {
        return Err(Error::BadRequest(format!(
            "{field} contains {:?} (U+{:04X}) at character {at}: control and bidi-control \
             characters are not allowed",
            c, c as u32
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_controls_and_bidi_controls_only() {
        for c in [
            '\0', '\n', '\t', '\u{7f}', '\u{85}', '\u{9f}', '\u{200e}', '\u{200f}', '\u{202a}',
            '\u{202e}', '\u{2066}', '\u{2069}',
        ] {
            assert!(is_forbidden(c), "U+{:04X}", c as u32);
            let e = check("name", &format!("a{c}b"), 10)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("name contains") && e.contains("at character 1"),
                "{e}"
            );
        }
        for ok in [
            "Acme Corp",
            "Müller & Söhne",
            "東京",
            "عربي",
            "a\u{200d}b",
            "",
        ] {
            check("name", ok, 20).unwrap();
        }
        assert!(check("name", &"é".repeat(11), 10).is_err());
        check("name", &"é".repeat(10), 10).unwrap();
    }

    /// Security review finding: org names accepted NUL and bidi controls. Every free-text
    /// field a caller sets goes through [`check`].
    #[test]
    fn every_free_text_field_refuses_controls_and_bidi_controls() {
        use crate::registry::tests::registry;
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "Acme").unwrap().id;
        let ca = crate::server_upload::tests::Ca::root("acme CA");
        let ca_id = r.add_ca(&acme, ca.pem.as_bytes(), "devices").unwrap().id;
        for bad in [
            "Acme\0Corp",
            "Acme\u{202e}proC",
            "Acme\u{2066}x",
            "a\u{200f}",
            "a\u{1b}[2J",
        ] {
            let refused = |what: &str, res: Result<()>| match res {
                Err(Error::BadRequest(m)) => {
                    assert!(m.contains("control"), "{what} {bad:?}: {m}")
                }
                other => panic!("{what} accepted {bad:?}: {other:?}"),
            };
            refused("org name", r.create_org("beta", bad).map(drop));
            refused(
                "CA description",
                r.add_ca(&acme, ca.pem.as_bytes(), bad).map(drop),
            );
            refused(
                "CA description update",
                r.update_ca(&acme, &ca_id, None, Some(bad.into())).map(drop),
            );
            refused("token name", r.create_token(&acme, bad).map(drop));
            refused(
                "block reason",
                r.block_device(&acme, "d:s:1", bad).map(drop),
            );
        }
        assert!(r
            .list_orgs()
            .unwrap()
            .iter()
            .all(|o| o.id.as_str() != "beta"));
        assert_eq!(r.get_ca(&acme, &ca_id).unwrap().description, "devices");
    }
}
