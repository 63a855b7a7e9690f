//! The ledger against a model: whatever sequence of reports, flights begun, and flights landed
//! (committed or failed, in any order, several in the air at once), each flight's rows and
//! acknowledgements are exactly what a plain model says they must be: the sessions that changed
//! longest ago first, never one session in two flights, and the fixed-size table never loses an
//! entry (it is small here, so probe runs wrap and removals shift entries around). And a flight
//! says how long its oldest report waited: never less than the truth, and exactly by the rule the
//! ledger documents (see `Flight::waited`).

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use trunk::frame::CloseReason;
use trunk::ledger::{Flight, Ledger, LedgerFull, LedgerSlot, SessionKey, Update};
use trunk::time::Instant;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

#[derive(Debug, Clone)]
enum Op {
    Record { session: u64, total: u64, device: bool, close: bool, route: u32 },
    Begin { max_rows: usize },
    Land { which: usize, ok: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..24, 0u64..1000, any::<bool>(), prop::bool::weighted(0.1), 0u32..4)
            .prop_map(|(session, total, device, close, route)| Op::Record { session, total, device, close, route }),
        1 => (1usize..10).prop_map(|max_rows| Op::Begin { max_rows }),
        1 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(which, ok)| Op::Land { which, ok }),
    ]
}

/// What reports since a flight began carried.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Part {
    device: bool,
    closed: bool,
}

impl Part {
    fn merge(&mut self, other: Part) {
        self.device |= other.device;
        self.closed |= other.closed;
    }
}

#[derive(Debug, Default, Clone)]
struct Session {
    total: u64,
    route: u32,
    /// Reports not yet in a flight.
    pending: Option<Part>,
    /// When the oldest of the pending reports arrived.
    pending_since: u64,
    /// The flight it is in: (total written, what the reports carried, when the oldest of them
    /// arrived).
    flying: Option<(u64, Part, u64)>,
}

/// A flight in the air, as the model sees it: when it began, and the stamp its sessions go back
/// to the queue with if it fails (its oldest stamp).
struct Flying {
    flight: Flight<'static>,
}

#[derive(Default)]
struct Model {
    sessions: BTreeMap<u64, Session>,
    /// Changed sessions not in flight, oldest change first.
    queue: VecDeque<u64>,
}

fn key(session: u64) -> SessionKey {
    SessionKey { gateway: 3, boot_epoch: 9, session }
}

proptest! {
    #[test]
    fn matches_a_model(ops in prop::collection::vec(op(), 1..400), seed in any::<u64>()) {
        // 32 slots: at most 28 in use, so runs are long and wrap around the end.
        let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 32], seed);
        let mut model = Model::default();
        // Each flight's keys live in a buffer of its own, as in the aggregator (leaked: a few
        // bytes per case, and flights may then outlive any one loop iteration).
        let mut flights: Vec<Flying> = Vec::new();
        let mut now = 1_000u64;
        for (i, op) in ops.into_iter().enumerate() {
            now += (i % 7) as u64;
            match op {
                Op::Record { session, total, device, close, route } => {
                    let update = Update {
                        total: Some(total),
                        device: device.then_some(b"dev".as_slice()),
                        closed: close.then_some(CloseReason::NORMAL),
                    };
                    let full = ledger.room() == 0 && !model.sessions.contains_key(&session);
                    match ledger.record(key(session), route, update, Instant::from_millis(now)) {
                        Err(LedgerFull { .. }) => prop_assert!(full),
                        Ok(()) => {
                            prop_assert!(!full);
                            let m = model.sessions.entry(session).or_default();
                            m.total = m.total.max(total);
                            m.route = route;
                            if m.pending.is_none() {
                                m.pending_since = now;
                                if m.flying.is_none() {
                                    model.queue.push_back(session);
                                }
                            }
                            m.pending.get_or_insert_with(Part::default).merge(Part { device, closed: close });
                        }
                    }
                }
                Op::Begin { max_rows } => {
                    let buffer: &'static mut [SessionKey] =
                        Box::leak(vec![key(0); max_rows].into_boxed_slice());
                    let flight = ledger.begin_flush(buffer, Instant::from_millis(now));
                    let n = model.queue.len().min(max_rows);
                    let expected: Vec<u64> = model.queue.drain(..n).collect();
                    let got: Vec<u64> = flight.keys().iter().map(|k| k.session).collect();
                    prop_assert_eq!(&got, &expected, "the oldest changes first");
                    let mut truly_waited = 0;
                    for (row, s) in ledger.rows(&flight).zip(&expected) {
                        let m = model.sessions.get_mut(s).unwrap();
                        prop_assert!(m.flying.is_none(), "a session in two flights");
                        let part = m.pending.take().unwrap();
                        prop_assert_eq!(
                            (row.key.session, row.total, row.device.is_some(), row.closed.is_some()),
                            (*s, m.total, part.device, part.closed)
                        );
                        // Each row's wait, from its oldest report's arrival (the model's clock).
                        prop_assert_eq!(row.waited(Instant::from_millis(now)).as_millis(), now - m.pending_since, "a row's wait");
                        prop_assert_eq!(row.waited(Instant::from_millis(now + 5)).as_millis(), now + 5 - m.pending_since);
                        truly_waited = truly_waited.max(now - m.pending_since);
                        m.flying = Some((m.total, part, m.pending_since));
                    }
                    if flight.is_empty() {
                        ledger.commit_succeeded(flight, |_, _, _| panic!("an empty flight acks nothing"));
                    } else {
                        // Later, as it is now plus what the flight takes.
                        prop_assert_eq!(flight.waited(Instant::from_millis(now)).as_millis(), truly_waited, "the oldest row's wait");
                        prop_assert_eq!(flight.waited(Instant::from_millis(now + 5)).as_millis(), truly_waited + 5);
                        flights.push(Flying { flight });
                    }
                }
                Op::Land { which, ok } => {
                    if flights.is_empty() {
                        continue;
                    }
                    let Flying { flight } = flights.swap_remove(which % flights.len());
                    let keys: Vec<u64> = flight.keys().iter().map(|k| k.session).collect();
                    if ok {
                        let mut acked = Vec::new();
                        ledger.commit_succeeded(flight, |route, k, e| acked.push((k.session, route, e.total, e.closed)));
                        prop_assert_eq!(acked.len(), keys.len());
                        for (s, route, total, closed) in acked {
                            let m = model.sessions.get_mut(&s).unwrap();
                            let (written, part, _) = m.flying.take().unwrap();
                            // Told on the route of the newest report, the total that was written.
                            prop_assert_eq!((route, total, closed), (m.route, written, part.closed));
                            if m.pending.is_some() {
                                // Its reports came during the flight: they wait since they came.
                                model.queue.push_back(s);
                            } else {
                                model.sessions.remove(&s);
                            }
                        }
                    } else {
                        ledger.commit_failed(flight);
                        for s in keys.iter().rev() {
                            let m = model.sessions.get_mut(s).unwrap();
                            let (_, part, since) = m.flying.take().unwrap();
                            // The flight's reports came before any that came while it flew.
                            m.pending_since = since;
                            m.pending.get_or_insert_with(Part::default).merge(part);
                            model.queue.push_front(*s);
                        }
                    }
                }
            }
            prop_assert_eq!(ledger.len(), model.sessions.len());
            prop_assert_eq!(ledger.dirty(), model.sessions.values().filter(|m| m.pending.is_some()).count());
            prop_assert_eq!(ledger.ready(), model.queue.len());
            prop_assert_eq!(ledger.in_flight(), model.sessions.values().filter(|m| m.flying.is_some()).count());
        }
    }
}

#[test]
fn reports_during_a_commit_wait_for_the_next_flush() {
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 1);
    let (mut first, mut second) = ([key(0); 100], [key(0); 100]);
    ledger.record(key(1), 10, Update { total: Some(5), ..Update::default() }, Instant::ZERO).unwrap();
    let flight = ledger.begin_flush(&mut first, Instant::ZERO);
    assert_eq!(flight.len(), 1);
    // Arrives while the transaction runs, on another link.
    ledger.record(key(1), 11, Update { total: Some(8), ..Update::default() }, Instant::ZERO).unwrap();
    assert!(
        ledger.begin_flush(&mut second, Instant::ZERO).is_empty(),
        "a session is in one flight at a time"
    );
    let mut acks = Vec::new();
    ledger.commit_succeeded(flight, |route, _, e| acks.push((route, e.total)));
    // The commit held 5; the newest report came from route 11, so that is where it is told.
    assert_eq!(acks, [(11, 5)]);
    let flight = ledger.begin_flush(&mut second, Instant::ZERO);
    assert_eq!(flight.len(), 1);
    acks.clear();
    ledger.commit_succeeded(flight, |route, _, e| acks.push((route, e.total)));
    assert_eq!(acks, [(11, 8)]);
    assert!(ledger.is_empty());
}

#[test]
fn flights_over_disjoint_sessions_land_in_any_order() {
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 2);
    for s in 1..=4 {
        ledger.record(key(s), 1, Update { total: Some(s * 10), ..Update::default() }, Instant::ZERO).unwrap();
    }
    let (mut a, mut b, mut c) = ([key(0); 2], [key(0); 2], [key(0); 2]);
    let first = ledger.begin_flush(&mut a, Instant::ZERO);
    let second = ledger.begin_flush(&mut b, Instant::ZERO);
    assert_eq!(first.keys(), [key(1), key(2)]);
    assert_eq!(second.keys(), [key(3), key(4)]);
    assert!(ledger.begin_flush(&mut c, Instant::ZERO).is_empty());
    assert_eq!(ledger.in_flight(), 4);
    // The second lands first; the first fails and comes back at the front of the queue.
    let mut acks = Vec::new();
    ledger.commit_succeeded(second, |_, k, e| acks.push((k.session, e.total)));
    assert_eq!(acks, [(3, 30), (4, 40)]);
    ledger.record(key(5), 1, Update { total: Some(50), ..Update::default() }, Instant::ZERO).unwrap();
    ledger.commit_failed(first);
    let again = ledger.begin_flush(&mut c, Instant::ZERO);
    assert_eq!(again.keys(), [key(1), key(2)], "a failed flight is written first");
    ledger.commit_succeeded(again, |_, _, _| {});
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger.ready(), 1);
}

#[test]
fn a_flush_costs_what_changed_not_the_table_size() {
    // A million slots, three changes: a flight touches three sessions. (The table's size shows
    // up nowhere but its allocation; timing is not asserted, the queue is.)
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 1 << 20], 3);
    for s in [7, 1 << 40, 3] {
        ledger.record(key(s), 1, Update { total: Some(1), ..Update::default() }, Instant::ZERO).unwrap();
    }
    assert_eq!(ledger.ready(), 3);
    let mut buffer = [key(0); 8];
    let flight = ledger.begin_flush(&mut buffer, Instant::ZERO);
    assert_eq!(flight.keys(), [key(7), key(1 << 40), key(3)], "in the order they changed");
    ledger.commit_succeeded(flight, |_, _, _| {});
    assert!(ledger.is_empty());
}

#[test]
fn a_flight_knows_how_long_its_oldest_report_waited() {
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 4);
    let count = |n| Update { total: Some(n), ..Update::default() };
    ledger.record(key(1), 1, count(1), at(1_000)).unwrap();
    ledger.record(key(2), 1, count(1), at(1_400)).unwrap();
    let mut a = [key(0); 8];
    let flight = ledger.begin_flush(&mut a, at(1_500));
    assert_eq!(flight.waited(at(1_500)).as_millis(), 500, "session 1 waits since 1,000");
    assert_eq!(flight.waited(at(1_800)).as_millis(), 800, "and on while the transaction runs");
    let waits: Vec<u64> = ledger.rows(&flight).map(|r| r.waited(at(1_500)).as_millis()).collect();
    assert_eq!(waits, [500, 100], "each row from its own oldest report");
    // Arrives during the commit: its wait is counted from its arrival (1,700).
    ledger.record(key(1), 1, count(2), at(1_700)).unwrap();
    ledger.commit_succeeded(flight, |_, _, _| {});
    let mut b = [key(0); 8];
    let flight = ledger.begin_flush(&mut b, at(2_000));
    assert_eq!(flight.waited(at(2_000)).as_millis(), 300);
    // A failed flight's sessions wait on from their oldest report, before any newer one.
    ledger.commit_failed(flight);
    ledger.record(key(1), 1, count(3), at(2_500)).unwrap();
    ledger.record(key(3), 1, count(1), at(2_900)).unwrap();
    let flight = ledger.begin_flush(&mut b, at(3_000));
    assert_eq!(flight.keys(), [key(1), key(3)]);
    assert_eq!(flight.waited(at(3_000)).as_millis(), 1_300);
    let waits: Vec<u64> = ledger.rows(&flight).map(|r| r.waited(at(3_000)).as_millis()).collect();
    assert_eq!(waits, [1_300, 100]);
    ledger.commit_succeeded(flight, |_, _, _| {});
    assert!(ledger.is_empty());
}

/// Callers read their clock before they take the lock that orders their calls, so a report may
/// be recorded a millisecond "after" the flight that takes it began: it waited nothing, not
/// 49 days (the 32-bit clock wrapped backwards; seen as flush lags of 4,294,967 s in
/// holdfast_flush_lag_seconds at 250,000 reports/s).
#[test]
fn a_report_stamped_after_its_flight_began_waited_nothing() {
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 5);
    let count = |n| Update { total: Some(n), ..Update::default() };
    ledger.record(key(1), 1, count(1), at(1_001)).unwrap();
    let mut keys = [key(0); 8];
    let flight = ledger.begin_flush(&mut keys, at(1_000));
    assert_eq!(flight.waited(at(1_000)).as_millis(), 0);
    let waits: Vec<u64> = ledger.rows(&flight).map(|r| r.waited(at(1_000)).as_millis()).collect();
    assert_eq!(waits, [0]);
    // And across the 32-bit wrap of the callers' milliseconds, a real wait stays what it was.
    ledger.commit_succeeded(flight, |_, _, _| {});
    let before_wrap = u64::from(u32::MAX) - 99;
    ledger.record(key(2), 1, count(1), at(before_wrap)).unwrap();
    let flight = ledger.begin_flush(&mut keys, at(before_wrap + 300));
    assert_eq!(flight.waited(at(before_wrap + 300)).as_millis(), 300);
}
