//! The ledger against a model: whatever sequence of reports, flushes, failed and successful
//! commits, each commit's rows and acknowledgements are exactly what a plain map says they must be,
//! and the fixed-size table never loses an entry (it is small here, so probe runs wrap and
//! removals shift entries around).

use std::collections::BTreeMap;

use proptest::prelude::*;
use trunk::frame::CloseReason;
use trunk::ledger::{Ledger, LedgerFull, LedgerSlot, SessionKey, Update};

#[derive(Debug, Clone)]
enum Op {
    Record { session: u64, total: u64, device: bool, close: bool, route: u32 },
    Flush { max_rows: usize, ok: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..24, 0u64..1000, any::<bool>(), prop::bool::weighted(0.1), 0u32..4)
            .prop_map(|(session, total, device, close, route)| Op::Record { session, total, device, close, route }),
        1 => (1usize..10, prop::bool::weighted(0.7)).prop_map(|(max_rows, ok)| Op::Flush { max_rows, ok }),
    ]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Model {
    total: u64,
    route: u32,
    device: bool,
    closed: bool,
}

fn key(session: u64) -> SessionKey {
    SessionKey { gateway: 3, boot_epoch: 9, session }
}

proptest! {
    #[test]
    fn matches_a_model(ops in prop::collection::vec(op(), 1..400), seed in any::<u64>()) {
        // 32 slots: at most 28 in use, so runs are long and wrap around the end.
        let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 32], seed);
        let mut pending: BTreeMap<u64, Model> = BTreeMap::new();
        let mut committed: BTreeMap<u64, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Record { session, total, device, close, route } => {
                    let update = Update {
                        total: Some(total),
                        device: device.then_some(b"dev".as_slice()),
                        closed: close.then_some(CloseReason::NORMAL),
                    };
                    let full = ledger.room() == 0 && !pending.contains_key(&session);
                    match ledger.record(key(session), route, update) {
                        Err(LedgerFull) => prop_assert!(full),
                        Ok(()) => {
                            prop_assert!(!full);
                            let m = pending.entry(session).or_default();
                            m.total = m.total.max(total);
                            m.route = route;
                            m.device |= device;
                            m.closed |= close;
                        }
                    }
                }
                Op::Flush { max_rows, ok } => {
                    let n = ledger.begin_flush(max_rows);
                    prop_assert_eq!(n, pending.len().min(max_rows));
                    let rows: BTreeMap<u64, (u64, bool, bool)> = ledger
                        .rows()
                        .map(|r| (r.key.session, (r.total, r.device.is_some(), r.closed.is_some())))
                        .collect();
                    prop_assert_eq!(rows.len(), n);
                    for (s, (total, device, closed)) in &rows {
                        let m = &pending[s];
                        prop_assert_eq!((m.total, m.device, m.closed), (*total, *device, *closed));
                    }
                    if ok {
                        let mut acked = BTreeMap::new();
                        ledger.commit_succeeded(|route, k, e| {
                            acked.insert(k.session, (route, e.total, e.closed));
                        });
                        prop_assert_eq!(acked.len(), n);
                        for (s, (route, total, closed)) in acked {
                            let m = pending.remove(&s).unwrap();
                            prop_assert_eq!((route, total, closed), (m.route, m.total, m.closed));
                            let c = committed.entry(s).or_default();
                            *c = (*c).max(total);
                        }
                    } else {
                        ledger.commit_failed();
                    }
                }
            }
            prop_assert_eq!(ledger.len(), pending.len());
            prop_assert_eq!(ledger.dirty(), pending.len());
        }
    }
}

#[test]
fn reports_during_a_commit_wait_for_the_next_flush() {
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 1);
    ledger.record(key(1), 10, Update { total: Some(5), ..Update::default() }).unwrap();
    assert_eq!(ledger.begin_flush(100), 1);
    // Arrives while the transaction runs, on another link.
    ledger.record(key(1), 11, Update { total: Some(8), ..Update::default() }).unwrap();
    assert_eq!(ledger.begin_flush(100), 0, "one flush at a time");
    let mut acks = Vec::new();
    ledger.commit_succeeded(|route, _, e| acks.push((route, e.total)));
    // The commit held 5; the newest report came from route 11, so that is where it is told.
    assert_eq!(acks, [(11, 5)]);
    assert_eq!(ledger.begin_flush(100), 1);
    acks.clear();
    ledger.commit_succeeded(|route, _, e| acks.push((route, e.total)));
    assert_eq!(acks, [(11, 8)]);
    assert!(ledger.is_empty());
}
