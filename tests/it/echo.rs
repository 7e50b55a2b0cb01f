//! C-ECHO, and association rejection on a wrong called AE title.

use std::time::Duration;

use crate::support::dcmtk;
use crate::support::raw::{self, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};

#[test]
fn echoscu_gets_success() {
    let dir = test_dir("echo");
    let server = Server::start(dir.path());

    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(20));

    assert!(echo.success(), "echoscu failed:\n{echo}");
    assert!(
        echo.text().contains("Received Echo Response (Success)"),
        "no Success in:\n{echo}"
    );
}

#[test]
fn wrong_called_ae_title_is_rejected() {
    let dir = test_dir("echo-wrong-ae");
    let server = Server::builder(dir.path()).ae_title("ARCHIVE2").start();

    // The default title is wrong once --aet names another.
    let echo = dcmtk::echo(server.addr(), "IMAGESERVER", Duration::from_secs(20));
    assert!(
        !echo.success(),
        "echoscu to a wrong AE title succeeded:\n{echo}"
    );
    assert!(
        echo.text().contains("Association Rejected"),
        "echoscu did not report a rejection:\n{echo}"
    );

    let mut peer = RawPeer::connect(server.addr());
    let reply = peer.request_association(
        "NOT-THE-SERVER",
        "RAWSCU",
        &[Proposal::implicit(1, raw::VERIFICATION)],
        raw::CLIENT_MAX_PDU,
    );
    assert_eq!(
        reply,
        Some(raw::REJECT_CALLED_AE),
        "expected A-ASSOCIATE-RJ (permanent, service user, called AE title not recognised)"
    );

    // The right AE title still works afterwards.
    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(20));
    assert!(echo.success(), "echoscu failed after a rejection:\n{echo}");
}
