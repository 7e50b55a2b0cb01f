//! The acceptor's answer to an A-ASSOCIATE-RQ (PS3.8 9.3.2–9.3.4, D.3.3):
//! protocol version, application context, the caller's access, the
//! presentation contexts (first proposed transfer syntax the registry
//! reads), SCP/SCU role selection for storage classes, C-FIND's extended
//! negotiation (combined date-time matching only), and the User Identity
//! server response when one was asked for.
//!
//! Pure: the acceptor reads the request and writes the answer over
//! whichever [`Transport`](super::transport::Transport) it has, plain or
//! TLS (dicom-ul's `establish` takes a `TcpStream` only). It follows
//! dicom-ul 0.10's server negotiation, which it replaces.

use std::collections::HashSet;

use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceUserReason,
    AssociationRJSource, AssociationRQ, PresentationContextResult, PresentationContextResultReason,
    RequestorRoles, UserIdentity, UserVariableItem,
};

/// The only application context (PS3.7 A.2.1).
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Implicit VR Little Endian: the transfer syntax named in a refused context.
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// User Identity server response sub-item (PS3.7 D.3.3.7.2).
const USER_IDENTITY_RESPONSE: u8 = 0x59;

/// What we accept.
#[derive(Debug, Clone)]
pub(crate) struct AcceptOptions {
    /// Our AE title (echoed; the access check compares).
    pub max_pdu_length: u32,
    /// The abstract syntaxes we accept.
    pub abstract_syntaxes: HashSet<String>,
    /// Whether a SOP class may take the SCP role (storage classes).
    pub role_selectable: fn(&str, &[String]) -> bool,
    /// Private storage classes (for `role_selectable`).
    pub extra_storage: Vec<String>,
}

/// The negotiated association.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// The caller's AE title, trimmed.
    pub calling_ae: String,
    /// Accepted contexts: (id, abstract syntax, transfer syntax).
    pub contexts: Vec<(u8, String, String)>,
    /// The largest PDU the caller accepts.
    pub peer_max_pdu: u32,
    /// Abstract syntaxes for which the caller takes the SCP role.
    pub scp_roles: Vec<String>,
    /// C-FIND SOP classes with combined date-time matching agreed.
    pub combined_date_time: Vec<String>,
}

/// The caller's access, asked with (calling AE, called AE, user identity):
/// Ok(()) admits.
pub(crate) type AccessCheck<'a> = dyn FnOnce(&str, &str, Option<&UserIdentity>) -> Result<(), AssociationRJServiceUserReason>
    + 'a;

/// The A-ASSOCIATE-AC for `request` and what it negotiated, or the
/// A-ASSOCIATE-RJ.
pub(crate) fn answer(
    request: AssociationRQ,
    options: &AcceptOptions,
    access: Box<AccessCheck<'_>>,
) -> Result<(AssociationAC, Negotiated), AssociationRJ> {
    let reject = |reason| AssociationRJ {
        result: AssociationRJResult::Permanent,
        source: AssociationRJSource::ServiceUser(reason),
    };
    if request.protocol_version & 1 == 0 {
        return Err(reject(AssociationRJServiceUserReason::NoReasonGiven));
    }
    if trim(&request.application_context_name) != APPLICATION_CONTEXT {
        return Err(reject(
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        ));
    }
    let mut user_variables = vec![
        UserVariableItem::MaxLength(options.max_pdu_length),
        UserVariableItem::ImplementationClassUID(dicom_ul::IMPLEMENTATION_CLASS_UID.to_string()),
        UserVariableItem::ImplementationVersionName(
            dicom_ul::IMPLEMENTATION_VERSION_NAME.to_string(),
        ),
    ];
    let mut identity = None;
    let mut peer_max_pdu = dicom_ul::pdu::DEFAULT_MAX_PDU;
    let mut roles: Vec<(String, RequestorRoles)> = Vec::new();
    let mut combined_date_time = Vec::new();
    for item in request.user_variables {
        match item {
            UserVariableItem::MaxLength(0) => peer_max_pdu = dicom_ul::pdu::MAXIMUM_PDU_SIZE,
            UserVariableItem::MaxLength(length) => {
                peer_max_pdu = length.min(dicom_ul::pdu::MAXIMUM_PDU_SIZE)
            }
            UserVariableItem::UserIdentityItem(user) => identity = Some(user),
            UserVariableItem::ScuScpRoleSelectionSubItem(class, requested) => {
                let uid = trim(&class).to_string();
                if (options.role_selectable)(&uid, &options.extra_storage) {
                    user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                        class, requested,
                    ));
                    roles.push((uid, requested));
                }
            }
            UserVariableItem::SopClassExtendedNegotiationSubItem(class, asked) => {
                let uid = trim(&class).to_string();
                if let Some(agreed) = find_extended_negotiation(&uid, &asked) {
                    if agreed.get(1) == Some(&1) {
                        combined_date_time.push(uid);
                    }
                    user_variables.push(UserVariableItem::SopClassExtendedNegotiationSubItem(
                        class, agreed,
                    ));
                }
            }
            _ => {}
        }
    }
    access(
        trim(&request.calling_ae_title),
        trim(&request.called_ae_title),
        identity.as_ref(),
    )
    .map_err(reject)?;
    if identity
        .as_ref()
        .is_some_and(UserIdentity::positive_response_requested)
    {
        // Username and username+passcode carry an empty server response.
        user_variables.push(UserVariableItem::Unknown(
            USER_IDENTITY_RESPONSE,
            vec![0, 0],
        ));
    }
    let mut results = Vec::with_capacity(request.presentation_contexts.len());
    let mut contexts = Vec::new();
    for proposed in request.presentation_contexts {
        let abstract_syntax = trim(&proposed.abstract_syntax).to_string();
        let (reason, transfer_syntax) = if !options.abstract_syntaxes.contains(&abstract_syntax) {
            (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                IMPLICIT_VR_LE.to_string(),
            )
        } else {
            match proposed
                .transfer_syntaxes
                .iter()
                .map(|ts| trim(ts))
                .find(|ts| dicom_ul::association::server::is_supported(ts))
            {
                Some(ts) => (PresentationContextResultReason::Acceptance, ts.to_string()),
                None => (
                    PresentationContextResultReason::TransferSyntaxesNotSupported,
                    IMPLICIT_VR_LE.to_string(),
                ),
            }
        };
        if reason == PresentationContextResultReason::Acceptance {
            contexts.push((proposed.id, abstract_syntax, transfer_syntax.clone()));
        }
        results.push(PresentationContextResult {
            id: proposed.id,
            reason,
            transfer_syntax,
        });
    }
    let scp_roles = contexts
        .iter()
        .filter(|(_, abstract_syntax, _)| {
            roles
                .iter()
                .any(|(class, requested)| class == abstract_syntax && requested.scp)
        })
        .map(|(_, abstract_syntax, _)| abstract_syntax.clone())
        .collect();
    combined_date_time.retain(|uid| negotiated_classes(&contexts).any(|c| c == uid));
    let negotiated = Negotiated {
        calling_ae: trim(&request.calling_ae_title).to_string(),
        contexts,
        peer_max_pdu,
        scp_roles,
        combined_date_time,
    };
    Ok((
        AssociationAC {
            protocol_version: 1,
            calling_ae_title: request.calling_ae_title,
            called_ae_title: request.called_ae_title,
            application_context_name: request.application_context_name,
            presentation_contexts: results,
            user_variables,
        },
        negotiated,
    ))
}

/// The abstract syntaxes of the accepted contexts.
fn negotiated_classes(contexts: &[(u8, String, String)]) -> impl Iterator<Item = &String> {
    contexts
        .iter()
        .map(|(_, abstract_syntax, _)| abstract_syntax)
}

/// C-FIND extended negotiation (PS3.4 C.5.1.1.1, Table C.5-1): of the
/// options only combined date-time matching (the second byte) is accepted;
/// relational queries, fuzzy semantic matching of person names, timezone
/// adjustment, empty value matching and the rest are answered 0 (at most
/// the seven bytes the table defines). Other SOP classes: no answer.
fn find_extended_negotiation(uid: &str, asked: &[u8]) -> Option<Vec<u8>> {
    use super::sop_classes::{PATIENT_ROOT_FIND, STUDY_ROOT_FIND};
    if ![PATIENT_ROOT_FIND, STUDY_ROOT_FIND].contains(&uid) {
        return None;
    }
    Some(
        asked
            .iter()
            .take(7)
            .enumerate()
            .map(|(i, byte)| u8::from(i == 1 && *byte == 1))
            .collect(),
    )
}

fn trim(uid: &str) -> &str {
    uid.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PresentationContextProposed, UserIdentityType};

    fn options() -> AcceptOptions {
        AcceptOptions {
            max_pdu_length: 16384,
            abstract_syntaxes: ["1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.7"]
                .into_iter()
                .map(String::from)
                .collect(),
            role_selectable: |uid, _| uid == "1.2.840.10008.5.1.4.1.1.7",
            extra_storage: Vec::new(),
        }
    }

    fn request(user_variables: Vec<UserVariableItem>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "SCU".into(),
            called_ae_title: "US".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextProposed {
                    id: 1,
                    abstract_syntax: "1.2.840.10008.1.1".into(),
                    transfer_syntaxes: vec!["9.9".into(), "1.2.840.10008.1.2.1".into()],
                },
                PresentationContextProposed {
                    id: 3,
                    abstract_syntax: "1.2.3.4".into(),
                    transfer_syntaxes: vec![IMPLICIT_VR_LE.into()],
                },
                PresentationContextProposed {
                    id: 5,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.7\0".into(),
                    transfer_syntaxes: vec![IMPLICIT_VR_LE.into()],
                },
            ],
            user_variables,
        }
    }

    #[test]
    fn contexts_roles_and_max_length_are_negotiated() {
        let (ac, negotiated) = answer(
            request(vec![
                UserVariableItem::MaxLength(0),
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    "1.2.840.10008.5.1.4.1.1.7".into(),
                    RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                ),
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    "1.2.840.10008.1.1".into(),
                    RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                ),
            ]),
            &options(),
            Box::new(|_, _, _| Ok(())),
        )
        .unwrap();
        assert_eq!(negotiated.peer_max_pdu, dicom_ul::pdu::MAXIMUM_PDU_SIZE);
        assert_eq!(
            negotiated.contexts,
            vec![
                (1, "1.2.840.10008.1.1".into(), "1.2.840.10008.1.2.1".into()),
                (5, "1.2.840.10008.5.1.4.1.1.7".into(), IMPLICIT_VR_LE.into()),
            ]
        );
        assert_eq!(negotiated.scp_roles, vec!["1.2.840.10008.5.1.4.1.1.7"]);
        assert_eq!(
            ac.presentation_contexts[1].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        let role_items = ac
            .user_variables
            .iter()
            .filter(|v| matches!(v, UserVariableItem::ScuScpRoleSelectionSubItem(..)))
            .count();
        assert_eq!(role_items, 1);
    }

    #[test]
    fn access_refusal_and_user_identity_response() {
        let identity = UserIdentity::new(
            true,
            UserIdentityType::UsernamePassword,
            b"alice".to_vec(),
            b"secret".to_vec(),
        );
        let refused = answer(
            request(vec![UserVariableItem::UserIdentityItem(identity.clone())]),
            &options(),
            Box::new(|calling, called, user| {
                assert_eq!((calling, called), ("SCU", "US"));
                assert_eq!(user.map(|u| u.primary_field()), Some(b"alice".to_vec()));
                Err(AssociationRJServiceUserReason::NoReasonGiven)
            }),
        )
        .unwrap_err();
        assert_eq!(refused.result, AssociationRJResult::Permanent);
        let (ac, _) = answer(
            request(vec![UserVariableItem::UserIdentityItem(identity)]),
            &options(),
            Box::new(|_, _, _| Ok(())),
        )
        .unwrap();
        assert!(ac.user_variables.contains(&UserVariableItem::Unknown(
            USER_IDENTITY_RESPONSE,
            vec![0, 0]
        )));
        let mut wrong_context = request(Vec::new());
        wrong_context.application_context_name = "1.2.3".into();
        assert!(answer(wrong_context, &options(), Box::new(|_, _, _| Ok(()))).is_err());
    }
}
