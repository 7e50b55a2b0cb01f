//! Sending instances to a remote AE: the send plan and retry policy over
//! the toolkit's storage SCU ([`crate::dicom::scu::StoreScu`]), used by
//! C-MOVE sub-operations, auto-routing and study sends.
//!
//! The plan groups instances by SOP class so that each association's
//! presentation contexts fit in 128; the policy reconnects once after an
//! association is lost mid-job, and gives the rest up after a second loss
//! in a row. A job's instances may come a batch at a time
//! ([`send_batches`]): the plan needs only the (SOP class, transfer
//! syntax) pairs up front, so a retrieve of a million instances never
//! holds their list.

use std::ops::ControlFlow;

use tracing::{debug, info, warn};

use crate::dicom::scu::{
    proposals, Destination, Outcome, Outgoing, ScuError, ScuOptions, StoreScu, Tally, MAX_CONTEXTS,
};

/// Associations lost in a row (with nothing stored in between) before the
/// rest of a job is given up.
const MAX_CONSECUTIVE_LOSSES: u32 = 2;

/// What [`send`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Instances stored with status success.
    pub completed: usize,
    /// Instances stored with a warning status.
    pub warning: usize,
    /// Instances not stored.
    pub failed: usize,
    /// The callback stopped the job; the rest was not attempted.
    pub stopped: bool,
    /// Associations opened.
    pub associations: usize,
    /// A batch could not be loaded (why): the job ended there, the rest
    /// was neither attempted nor reported.
    pub unloaded: Option<String>,
}

/// Sends `items` to `destination`, reporting every instance's outcome to
/// `on_result` in turn (items are grouped by association, in order within
/// a group: with at most 128 contexts needed, which is the usual case, one
/// association in the given order). `on_result` returning `Break` stops
/// the job between instances (the association is released).
///
/// `Err` only when the first association cannot be established (nothing
/// was reported then): connection refused, rejected, no acceptable
/// context, timeout. A later failure to connect fails the instances it
/// concerns (each reported); an association lost in the middle fails the
/// instance in flight, and the job reconnects once for the rest.
pub fn send<I: Outgoing>(
    destination: &Destination,
    options: &ScuOptions,
    items: &[I],
    on_result: &mut dyn FnMut(&I, &Outcome) -> ControlFlow<()>,
) -> Result<SendSummary, ScuError> {
    let pairs = pairs_of(items);
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(c, t)| (*c, *t)).collect();
    send_batches(
        destination,
        options,
        &pairs,
        1,
        &mut |_| Ok(items),
        on_result,
    )
}

/// [`send`] over instances loaded a batch at a time: `load(b)` for `b` in
/// `0..batches` (called again for each association group when the job
/// needs more than one, which takes more than 128 contexts). `pairs` are
/// the (SOP class, transfer syntax) pairs the whole job needs: contexts are
/// proposed for them alone, so an instance outside them (one that arrived
/// after the job was planned) fails for want of a context. A `load` error
/// ends the job with [`SendSummary::unloaded`].
pub fn send_batches<I: Outgoing, B: AsRef<[I]>>(
    destination: &Destination,
    options: &ScuOptions,
    pairs: &[(&str, &str)],
    batches: usize,
    load: &mut dyn FnMut(usize) -> Result<B, String>,
    on_result: &mut dyn FnMut(&I, &Outcome) -> ControlFlow<()>,
) -> Result<SendSummary, ScuError> {
    let mut summary = SendSummary::default();
    let mut report = |item: &I, outcome: &Outcome, summary: &mut SendSummary| {
        match outcome.tally() {
            Tally::Completed => summary.completed += 1,
            Tally::Warning => summary.warning += 1,
            Tally::Failed => summary.failed += 1,
        }
        if matches!(on_result(item, outcome), ControlFlow::Break(())) {
            summary.stopped = true;
        }
        summary.stopped
    };
    let groups = plan(pairs)?;
    for (group, classes) in groups.iter().enumerate() {
        let in_group = |item: &I| match groups
            .iter()
            .position(|g| g.contains(&item.sop_class_uid()))
        {
            Some(g) => g == group,
            // Not planned: fails for want of a context, in the first group.
            None => group == 0,
        };
        let group_pairs: Vec<(&str, &str)> = pairs
            .iter()
            .filter(|(class, _)| classes.contains(class))
            .copied()
            .collect();
        let mut scu: Option<StoreScu> = None;
        let mut losses = 0u32;
        // Set once the rest of the group cannot be sent: each is failed.
        let mut given_up: Option<String> = None;
        for batch in 0..batches {
            let loaded = match load(batch) {
                Ok(loaded) => loaded,
                Err(reason) => {
                    warn!(destination = %destination, %reason, batch, "cannot load the instances to send");
                    close(scu.take(), destination);
                    summary.unloaded = Some(reason);
                    return Ok(summary);
                }
            };
            for item in loaded.as_ref().iter().filter(|item| in_group(item)) {
                if let Some(reason) = &given_up {
                    let outcome = Outcome::Failed {
                        reason: reason.clone(),
                    };
                    if report(item, &outcome, &mut summary) {
                        return Ok(summary);
                    }
                    continue;
                }
                let current = match scu.as_mut() {
                    Some(current) => current,
                    None => {
                        match StoreScu::connect(destination, options, group_pairs.iter().copied()) {
                            Ok(opened) => {
                                summary.associations += 1;
                                scu.insert(opened)
                            }
                            Err(error) if summary.associations == 0 && reported(&summary) == 0 => {
                                return Err(error)
                            }
                            Err(error) => {
                                warn!(destination = %destination, %error, "cannot open a storage association");
                                let reason = error.to_string();
                                given_up = Some(reason.clone());
                                if report(item, &Outcome::Failed { reason }, &mut summary) {
                                    return Ok(summary);
                                }
                                continue;
                            }
                        }
                    }
                };
                let outcome = match current.store_item(item) {
                    Ok(outcome) => {
                        losses = 0;
                        outcome
                    }
                    Err(error) => {
                        if let Some(lost) = scu.take() {
                            lost.abort();
                        }
                        if !error.is_local() {
                            losses += 1;
                        }
                        warn!(destination = %destination, %error, sop_instance_uid = item.sop_instance_uid(), "storage association lost");
                        if losses >= MAX_CONSECUTIVE_LOSSES {
                            given_up = Some(format!(
                                "gave up after losing the association twice: {error}"
                            ));
                        }
                        Outcome::Failed {
                            reason: given_up.clone().unwrap_or_else(|| error.to_string()),
                        }
                    }
                };
                if report(item, &outcome, &mut summary) {
                    if let Some(open) = scu.take() {
                        if let Err(error) = open.release() {
                            debug!(destination = %destination, %error, "release after a stop failed");
                        }
                    }
                    return Ok(summary);
                }
            }
        }
        close(scu.take(), destination);
    }
    Ok(summary)
}

/// Releases a finished association: every instance was answered already,
/// so a failed release is only worth a log line.
fn close(scu: Option<StoreScu>, destination: &Destination) {
    if let Some(open) = scu {
        if let Err(error) = open.release() {
            info!(destination = %destination, %error, "storage association release failed");
        }
    }
}

fn reported(summary: &SendSummary) -> usize {
    summary.completed + summary.warning + summary.failed
}

/// The distinct (SOP class, transfer syntax) pairs of `items`, in order of
/// first appearance.
fn pairs_of<I: Outgoing>(items: &[I]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in items {
        let pair = (item.sop_class_uid(), item.transfer_syntax_uid());
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    pairs
}

/// Splits the SOP classes of `pairs` into association groups whose
/// contexts fit in 128, in order of first appearance.
fn plan<'a>(pairs: &[(&'a str, &'a str)]) -> Result<Vec<Vec<&'a str>>, ScuError> {
    // contexts each class needs
    let mut classes: Vec<(&str, Vec<&str>)> = Vec::new();
    for &(class, ts) in pairs {
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, syntaxes)) => {
                if !syntaxes.contains(&ts) {
                    syntaxes.push(ts);
                }
            }
            None => classes.push((class, vec![ts])),
        }
    }
    let mut groups: Vec<Vec<&str>> = Vec::new();
    let mut used = 0usize;
    for (class, syntaxes) in &classes {
        let needed = proposals(syntaxes.iter().map(|ts| (*class, *ts))).len();
        if needed > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(needed));
        }
        if groups.is_empty() || used + needed > MAX_CONTEXTS {
            groups.push(Vec::new());
            used = 0;
        }
        used += needed;
        groups.last_mut().expect("pushed above").push(class);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use std::net::Shutdown;
    use std::time::Duration;

    use dicom_ul::pdu::AbortRQSource;
    use dicom_ul::Pdu;

    use crate::dicom::dimse::{Command, Status};
    use crate::dicom::part10::reader::tests::part10;
    use crate::dicom::pdu::{self, Incoming, PduReader};
    use crate::dicom::scu::EXPLICIT_VR_LITTLE_ENDIAN;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    struct Item {
        class: String,
        ts: String,
    }

    impl Outgoing for Item {
        fn sop_class_uid(&self) -> &str {
            &self.class
        }
        fn sop_instance_uid(&self) -> &str {
            "1.2.3"
        }
        fn transfer_syntax_uid(&self) -> &str {
            &self.ts
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Err("not here".into())
        }
    }

    #[test]
    fn many_classes_spread_over_associations() {
        let item = |c: usize| Item {
            class: format!("1.2.3.{c}"),
            ts: EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
        };
        // 2 contexts per class: 64 classes fit one association, 65 do not.
        let items: Vec<Item> = (0..65).map(item).chain([item(0)]).collect();
        let pairs = pairs_of(&items);
        assert_eq!(pairs.len(), 65, "class 0 listed once");
        let groups = plan(&pairs).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 64, "64 classes of 2 contexts fill one");
        assert_eq!(groups[1], vec!["1.2.3.64"]);
        assert_eq!(groups[0][..2], ["1.2.3.0", "1.2.3.1"], "order kept");
        assert_eq!(plan(&pairs[..64]).unwrap().len(), 1);
        assert!(plan(&[]).unwrap().is_empty());
    }

    /// An instance held in memory.
    struct Mem {
        uid: String,
        bytes: Vec<u8>,
    }

    impl Outgoing for Mem {
        fn sop_class_uid(&self) -> &str {
            CT
        }
        fn sop_instance_uid(&self) -> &str {
            &self.uid
        }
        fn transfer_syntax_uid(&self) -> &str {
            EXPLICIT_VR_LITTLE_ENDIAN
        }
        fn file_size(&self) -> Option<u64> {
            Some(self.bytes.len() as u64)
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Ok(Box::new(Cursor::new(&self.bytes[..])))
        }
    }

    /// (SOP Instance UID, data set) of each instance a fake SCP stored.
    type Received = Vec<(String, Vec<u8>)>;

    /// What the fake storage SCP does with each C-STORE-RQ, in turn.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Answer(u16),
        Abort,
        Silent,
    }

    /// A storage SCP on loopback that plays `acts` (over as many
    /// associations as it takes) and returns the (instance, data set) pairs
    /// it received completely, once the client released after the last act.
    fn fake_scp(acts: Vec<Act>) -> (std::net::SocketAddr, std::thread::JoinHandle<Received>) {
        use dicom_ul::association::Association;
        use dicom_ul::ServerAssociationOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut acts = acts.into_iter();
            let mut received = Vec::new();
            let mut finished = false;
            while !finished {
                let (socket, _) = listener.accept().unwrap();
                let mut association = ServerAssociationOptions::new()
                    .accept_any()
                    .ae_title("FAKE")
                    .with_abstract_syntax(CT)
                    .establish(socket)
                    .unwrap();
                let peer_max = association.peer_max_pdu_length();
                let mut socket = association.inner_stream().try_clone().unwrap();
                drop(association);
                let mut reader = PduReader::new(0);
                let (mut command, mut data) = (Vec::new(), Vec::new());
                let mut request: Option<Command> = None;
                'pdus: loop {
                    let pdv_list: Vec<(u8, bool, bool, Vec<u8>)> = match reader.read(&mut socket) {
                        Ok(Incoming::PData(p)) => p
                            .pdvs()
                            .map(|v| v.unwrap())
                            .map(|v| (v.pc_id, v.is_command, v.is_last, v.data.to_vec()))
                            .collect(),
                        Ok(Incoming::Other(Pdu::ReleaseRQ)) => {
                            pdu::write_pdu(&mut socket, &Pdu::ReleaseRP).unwrap();
                            finished = acts.len() == 0;
                            break 'pdus;
                        }
                        Ok(_) | Err(_) => break 'pdus,
                    };
                    for (pc_id, is_command, is_last, bytes) in pdv_list {
                        if is_command {
                            command.extend_from_slice(&bytes);
                            if is_last {
                                request = Some(Command::decode(&command).unwrap());
                                command.clear();
                            }
                            continue;
                        }
                        data.extend_from_slice(&bytes);
                        if !is_last {
                            continue;
                        }
                        let rq = request.take().unwrap();
                        match acts.next().expect("an act for every store") {
                            Act::Answer(code) => {
                                received.push((
                                    rq.affected_sop_instance_uid.clone().unwrap(),
                                    std::mem::take(&mut data),
                                ));
                                let rsp = Command::store_rsp(&rq, Status(code));
                                let mut scratch = Vec::new();
                                pdu::write_pdata(
                                    &mut socket,
                                    &mut scratch,
                                    pc_id,
                                    true,
                                    &rsp.encode(),
                                    peer_max,
                                )
                                .unwrap();
                            }
                            Act::Abort => {
                                data.clear();
                                let abort = Pdu::AbortRQ {
                                    source: AbortRQSource::ServiceUser,
                                };
                                let _ = pdu::write_pdu(&mut socket, &abort);
                                let _ = socket.shutdown(Shutdown::Both);
                                break 'pdus;
                            }
                            Act::Silent => {
                                // Never answer: wait for the client to give up.
                                let mut sink = Vec::new();
                                let _ = socket.read_to_end(&mut sink);
                                finished = acts.len() == 0;
                                break 'pdus;
                            }
                        }
                    }
                }
            }
            received
        });
        (addr, handle)
    }

    fn instances(n: usize) -> Vec<Mem> {
        (0..n)
            .map(|i| Mem {
                uid: format!("1.2.3.{i}"),
                bytes: part10(20, &vec![i as u8; 100_000 + i]),
            })
            .collect()
    }

    fn destination(addr: std::net::SocketAddr) -> Destination {
        Destination {
            ae_title: "FAKE".into(),
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    #[test]
    fn send_reports_each_outcome_and_reconnects_after_an_abort() {
        let items = instances(4);
        let (addr, scp) = fake_scp(vec![
            Act::Answer(0x0000),
            Act::Abort,
            Act::Answer(0xB000),
            Act::Answer(0xA700),
        ]);
        let mut options = ScuOptions::new("TESTSCU");
        options.max_pdu_length = 16384;
        let mut seen = Vec::new();
        let summary = send(
            &destination(addr),
            &options,
            &items,
            &mut |item, outcome| {
                seen.push((item.uid.clone(), outcome.tally()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("1.2.3.0".to_string(), Tally::Completed),
                ("1.2.3.1".to_string(), Tally::Failed),
                ("1.2.3.2".to_string(), Tally::Warning),
                ("1.2.3.3".to_string(), Tally::Failed),
            ]
        );
        assert_eq!(
            (summary.completed, summary.warning, summary.failed),
            (1, 1, 2)
        );
        assert_eq!(summary.associations, 2, "one reconnection after the abort");
        let received = scp.join().unwrap();
        assert_eq!(received.len(), 3);
        for (uid, data) in received {
            let item = items.iter().find(|i| i.uid == uid).unwrap();
            assert_eq!(data, item.bytes[164..], "data set of {uid}");
        }
    }

    #[test]
    fn batches_share_one_association_and_a_failed_load_ends_the_job() {
        let items = instances(5);
        let (addr, scp) = fake_scp(vec![Act::Answer(0x0000); 5]);
        let pairs = [(CT, EXPLICIT_VR_LITTLE_ENDIAN)];
        let mut loads = Vec::new();
        let mut seen = Vec::new();
        let summary = send_batches(
            &destination(addr),
            &ScuOptions::new("TESTSCU"),
            &pairs,
            4,
            &mut |batch| {
                loads.push(batch);
                match batch {
                    0 => Ok(&items[..2]),
                    1 => Ok(&items[2..2]),
                    2 => Ok(&items[2..5]),
                    _ => Err("index down".to_string()),
                }
            },
            &mut |item, outcome| {
                seen.push((item.uid.clone(), outcome.tally()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(loads, vec![0, 1, 2, 3], "each batch loaded once, in order");
        let uids: Vec<&str> = seen.iter().map(|(uid, _)| uid.as_str()).collect();
        assert_eq!(
            uids,
            ["1.2.3.0", "1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"]
        );
        assert!(seen.iter().all(|(_, tally)| *tally == Tally::Completed));
        assert_eq!(summary.associations, 1, "batches do not reconnect");
        assert_eq!(summary.unloaded.as_deref(), Some("index down"));
        assert_eq!(scp.join().unwrap().len(), 5);
    }

    #[test]
    fn a_silent_peer_times_out_and_a_stop_ends_the_job() {
        let items = instances(3);
        let (addr, scp) = fake_scp(vec![Act::Answer(0x0000), Act::Silent]);
        let mut options = ScuOptions::new("TESTSCU");
        options.response_timeout = Duration::from_millis(300);
        let mut seen = Vec::new();
        let summary = send(&destination(addr), &options, &items, &mut |_, outcome| {
            seen.push(outcome.clone());
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(summary.stopped);
        assert_eq!(seen.len(), 2, "nothing after the stop");
        match &seen[1] {
            Outcome::Failed { reason } => assert!(reason.contains("did not answer"), "{reason}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(scp.join().unwrap().len(), 1);
    }

    #[test]
    fn nothing_listening_is_connection_refused() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let items = instances(1);
        let error = send(
            &destination(addr),
            &ScuOptions::new("TESTSCU"),
            &items,
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ScuError::ConnectionRefused { .. }),
            "{error:?}"
        );
    }
}
