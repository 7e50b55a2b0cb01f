//! The DICOM audit message XML (PS3.15 A.5.1), written by hand: the
//! schema is small and fixed, and every attribute and text value goes
//! through [`escape`].

use base64::Engine as _;

use super::event::{AuditEvent, Code, ParticipantObject};

/// AuditSourceIdentification: who reports the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSource {
    /// AuditSourceID.
    pub source_id: String,
    /// AuditEnterpriseSiteID, when configured.
    pub enterprise_site_id: Option<String>,
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, and characters XML 1.0
/// cannot carry (C0 controls but tab, LF, CR) replaced by U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC date-time
/// (`2026-12-06T07:01:02.345Z`), the form both EventDateTime and the
/// RFC 5424 TIMESTAMP take.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn coded(out: &mut String, element: &str, code: &Code) {
    out.push_str(&format!(
        "<{element} csd-code=\"{}\" codeSystemName=\"{}\" originalText=\"{}\"/>",
        escape(code.code),
        escape(code.scheme),
        escape(code.meaning)
    ));
}

fn attribute(out: &mut String, name: &str, value: &str) {
    out.push_str(&format!(" {name}=\"{}\"", escape(value)));
}

/// The event as a DICOM audit message (`<AuditMessage>`, UTF-8, no XML
/// declaration's encoding other than UTF-8).
pub fn audit_message(event: &AuditEvent, source: &AuditSource) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage>");
    out.push_str("<EventIdentification");
    attribute(&mut out, "EventActionCode", event.action.letter());
    attribute(&mut out, "EventDateTime", &rfc3339(event.at_ms));
    attribute(
        &mut out,
        "EventOutcomeIndicator",
        &event.outcome.value().to_string(),
    );
    out.push('>');
    coded(&mut out, "EventID", &event.kind.code());
    if let Some(code) = &event.type_code {
        coded(&mut out, "EventTypeCode", code);
    }
    if let Some(description) = &event.outcome_description {
        out.push_str(&format!(
            "<EventOutcomeDescription>{}</EventOutcomeDescription>",
            escape(description)
        ));
    }
    out.push_str("</EventIdentification>");
    for p in &event.participants {
        out.push_str("<ActiveParticipant");
        attribute(&mut out, "UserID", &p.user_id);
        if let Some(alternative) = &p.alternative_user_id {
            attribute(&mut out, "AlternativeUserID", alternative);
        }
        if let Some(name) = &p.user_name {
            attribute(&mut out, "UserName", name);
        }
        attribute(
            &mut out,
            "UserIsRequestor",
            if p.requestor { "true" } else { "false" },
        );
        if let Some(address) = &p.network_access_point {
            attribute(&mut out, "NetworkAccessPointID", address);
            let is_ip = address.parse::<std::net::IpAddr>().is_ok();
            attribute(
                &mut out,
                "NetworkAccessPointTypeCode",
                if is_ip { "2" } else { "1" },
            );
        }
        out.push('>');
        if let Some(role) = p.role {
            coded(&mut out, "RoleIDCode", &role.code());
        }
        out.push_str("</ActiveParticipant>");
    }
    out.push_str("<AuditSourceIdentification");
    attribute(&mut out, "AuditSourceID", &source.source_id);
    if let Some(site) = &source.enterprise_site_id {
        attribute(&mut out, "AuditEnterpriseSiteID", site);
    }
    // 4: application server process tier in a multi-tier system.
    out.push_str("><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>");
    for object in &event.objects {
        participant_object(&mut out, object);
    }
    out.push_str("</AuditMessage>");
    out
}

fn participant_object(out: &mut String, object: &ParticipantObject) {
    let base64 = base64::engine::general_purpose::STANDARD;
    match object {
        ParticipantObject::Study { uid, sop_classes } => {
            out.push_str("<ParticipantObjectIdentification");
            attribute(out, "ParticipantObjectID", uid);
            out.push_str(" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">");
            coded(
                out,
                "ParticipantObjectIDTypeCode",
                &Code {
                    code: "110180",
                    scheme: "DCM",
                    meaning: "Study Instance UID",
                },
            );
            for (class, count) in sop_classes {
                out.push_str("<SOPClass");
                attribute(out, "UID", class);
                attribute(out, "NumberOfInstances", &count.to_string());
                out.push_str("/>");
            }
            out.push_str("</ParticipantObjectIdentification>");
        }
        ParticipantObject::Patient { id, name } => {
            out.push_str("<ParticipantObjectIdentification");
            attribute(out, "ParticipantObjectID", id);
            out.push_str(" ParticipantObjectTypeCode=\"1\" ParticipantObjectTypeCodeRole=\"1\">");
            coded(
                out,
                "ParticipantObjectIDTypeCode",
                &Code {
                    code: "2",
                    scheme: "RFC-3881",
                    meaning: "Patient Number",
                },
            );
            if let Some(name) = name {
                out.push_str(&format!(
                    "<ParticipantObjectName>{}</ParticipantObjectName>",
                    escape(name)
                ));
            }
            out.push_str("</ParticipantObjectIdentification>");
        }
        ParticipantObject::Query {
            sop_class_uid,
            transfer_syntax_uid,
            identifier,
        } => {
            out.push_str("<ParticipantObjectIdentification");
            attribute(out, "ParticipantObjectID", sop_class_uid);
            out.push_str(" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">");
            coded(
                out,
                "ParticipantObjectIDTypeCode",
                &Code {
                    code: "110181",
                    scheme: "DCM",
                    meaning: "SOP Class UID",
                },
            );
            out.push_str(&format!(
                "<ParticipantObjectQuery>{}</ParticipantObjectQuery>",
                base64.encode(identifier)
            ));
            out.push_str("<ParticipantObjectDetail type=\"TransferSyntax\"");
            attribute(out, "value", &base64.encode(transfer_syntax_uid.as_bytes()));
            out.push_str("/></ParticipantObjectIdentification>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Action, EventKind, Outcome, Participant, Role};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_540_462_000), "2026-12-06T07:01:02.000Z");
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}"
        );
        let event = AuditEvent::new(EventKind::Query, Action::Execute, Outcome::Success)
            .participant(Participant::ae("EVIL\"<AE>", true, None, Role::Source))
            .object(ParticipantObject::Patient {
                id: "P&1".into(),
                name: Some("Doe^<John>".into()),
            });
        let xml = audit_message(
            &event,
            &AuditSource {
                source_id: "SRC".into(),
                enterprise_site_id: None,
            },
        );
        assert!(xml.contains("UserID=\"EVIL&quot;&lt;AE&gt;\""), "{xml}");
        assert!(xml.contains("ParticipantObjectID=\"P&amp;1\""), "{xml}");
        assert!(xml.contains("<ParticipantObjectName>Doe^&lt;John&gt;</ParticipantObjectName>"));
        assert!(xml.contains("<EventID csd-code=\"110112\" codeSystemName=\"DCM\""));
    }
}
