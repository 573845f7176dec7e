//! OpenAPI schemas of the validated string types (feature `openapi`).
//!
//! The API view types derive `utoipa::ToSchema` where they are defined; the newtypes
//! here serialize as plain strings (`#[serde(try_from = "String", into = "String")]`),
//! which a derive cannot see, so their schemas are written by hand: a string with the
//! pattern their `TryFrom` enforces.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::domains::DomainName;
use crate::names::{Identity, OrgId};

/// A [`crate::Name`] (device type, device id, app id), for patterns.
const NAME: &str = "[A-Za-z0-9_.-]{1,36}";

fn string(description: &str, pattern: Option<String>, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .examples([example])
        .into()
}

impl PartialSchema for OrgId {
    fn schema() -> RefOr<Schema> {
        string(
            "An organization id: 1-32 characters a-z 0-9, starting with a letter (a DNS label).",
            Some("^[a-z][a-z0-9]{0,31}$".into()),
            "acme",
        )
    }
}

impl ToSchema for OrgId {
    fn name() -> Cow<'static, str> {
        "OrgId".into()
    }
}

impl PartialSchema for Identity {
    fn schema() -> RefOr<Schema> {
        string(
            "Who a certificate (CN, else the first email SAN) or a token says its holder is: \
             `d:<deviceType>:<deviceId>`, `g:<gatewayType>:<gatewayId>` or `a:<appId>`. \
             The org is not part of it; the MQTT client id adds it (`d:<org>:<type>:<id>`).",
            Some(format!("^([dg]:{NAME}:{NAME}|a:{NAME})$")),
            "d:sensor:dev1",
        )
    }
}

impl ToSchema for Identity {
    fn name() -> Cow<'static, str> {
        "Identity".into()
    }
}

impl PartialSchema for DomainName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("hostname".into())))
            .description(Some(
                "A custom domain: a DNS name of at least two labels, lowercase, \
                 no wildcard, no trailing dot.",
            ))
            .examples(["iot.example.com"])
            .into()
    }
}

impl ToSchema for DomainName {
    fn name() -> Cow<'static, str> {
        "DomainName".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented patterns accept what the types accept (spot checks both ways).
    #[test]
    fn patterns_match_the_types() {
        let pattern = |s: RefOr<Schema>| match s {
            RefOr::T(Schema::Object(o)) => o.pattern.unwrap(),
            _ => panic!("not an inline object schema"),
        };
        assert_eq!(pattern(OrgId::schema()), "^[a-z][a-z0-9]{0,31}$");
        assert!(OrgId::try_from("a234567890123456789012345678901b").is_ok());
        assert!(OrgId::try_from("1acme").is_err());
        assert!(pattern(Identity::schema()).contains("[dg]:"));
        for ok in ["d:sensor:dev1", "g:gw:g-1", "a:dash"] {
            assert!(Identity::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["A:dash", "d:sensor", "a:x:y", "x:a:b"] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }
}
