//! What an idle TLS phone costs the aggregator: the heap its threads keep per held phone,
//! counted by this test binary's allocator, and held to a budget so that a change which makes a
//! held phone heavier (rustls's buffered connection back on the listener, a buffer kept after a
//! message) is noticed here rather than at a million phones. `scripts/bench/aggregator-memory.sh`
//! measures the same in RSS, with the allocator's overhead (`docs/benchmarks.md`).
//!
//! The service runs in this process on a runtime of its own whose threads are marked; only
//! their allocations count, so the phones (tokio-tungstenite over tokio-rustls, as in the
//! other tests) on the test's thread do not. The embedded store's worker thread is unmarked: a
//! row it frees for the service counts as kept, a few dozen bytes per phone at most.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use clap::Parser as _;
use futures_util::SinkExt as _;
use support::clients::{phone, wait_durable};
use tokio_tungstenite::tungstenite::Message;

/// The budget per idle TLS phone, in heap bytes the service keeps. Measured 2026-12-06 with
/// `lean-tls` on the listener: 6,451 B just connected (the largest parts: the phone's task,
/// 1,664 B; the TLS stream in hyper's upgraded box, 1,216 B, of which rustls's connection is
/// 1,088 B; rustls's record encrypter and decrypter, 560 B each; rustls's traffic state, 640 B);
/// then 6,511-6,641 B with the phone task's arguments kept once (1,280 B) and a 64-byte read
/// buffer. With tokio-rustls back on the listener (tried) this test fails: 10,607 B, rustls's
/// buffered connection adding its 4,096-byte receive buffer and more. Issue #13's goal is 6 KiB
/// of RSS per phone (`scripts/bench/aggregator-memory.sh`: 6,024 B, met); this budget catches a
/// revert, the script the goal.
const BUDGET_PER_PHONE: isize = 7 * 1024 + 512;
/// Less than this per phone means the phones were not held: rustls's keys and traffic state
/// (about 1.8 KiB) and the phone's task (1,280 B) alone are more.
const MIN_PER_PHONE: isize = 3 * 1024;
/// Phones connected before the first count, so that what is made once (the runtime's, the
/// store's, the allocator's first pages) is not counted per phone.
const WARM_UP: usize = 20;
/// Phones counted.
const PHONES: usize = 200;
/// Sizes of live allocations counted one by one (for the breakdown printed); larger ones share
/// the last bucket.
const SIZE_BUCKETS: usize = 20_000;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BY_SIZE: [AtomicIsize; SIZE_BUCKETS] = [const { AtomicIsize::new(0) }; SIZE_BUCKETS];

thread_local! {
    /// This thread is one of the service's.
    static SERVICE: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    SERVICE.try_with(Cell::get).unwrap_or(false)
}

fn count(size: usize, sign: isize) {
    LIVE.fetch_add(sign * size as isize, Ordering::Relaxed);
    BY_SIZE[size.min(SIZE_BUCKETS - 1)].fetch_add(sign, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counted() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && counted() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if counted() {
            count(layout.size(), -1);
        }
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() && counted() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The live allocations of the service's threads: bytes, and counts by size.
fn snapshot() -> (isize, Vec<isize>) {
    (LIVE.load(Ordering::Relaxed), BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect())
}

/// What each of `n` phones added between `before` and `after`: bytes, and the allocations that
/// came per phone (size x count per phone), largest first.
fn per_phone(before: &(isize, Vec<isize>), after: &(isize, Vec<isize>), n: usize) -> (isize, String) {
    let bytes = (after.0 - before.0) / n as isize;
    let mut parts: Vec<(usize, f64)> = (0..SIZE_BUCKETS)
        .map(|size| (size, (after.1[size] - before.1[size]) as f64 / n as f64))
        .filter(|&(_, per)| per >= 0.5)
        .collect();
    parts.sort_by_key(|part| std::cmp::Reverse(part.0));
    let parts: Vec<String> = parts.iter().map(|(size, per)| format!("{size} B x {per:.2}")).collect();
    (bytes, parts.join(", "))
}

/// Idle TLS phones, just connected and again after a message each way (4 bytes in, the durable
/// total out), each keep at most [`BUDGET_PER_PHONE`] of the service's heap: no TLS buffer, no
/// WebSocket buffer kept after use.
#[test]
fn an_idle_tls_phone_keeps_little_of_the_aggregators_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cli = aggregator::config::Cli::parse_from([
        "aggregator",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--flush-interval-ms",
        "20",
        // Far beyond the test: nobody is closed as idle while counted.
        "--phone-idle-timeout-ms",
        "600000",
    ]);
    // The embedded store in `dir`, whatever DATABASE_URL the environment has.
    cli.serve.database_url = None;
    let service_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| SERVICE.with(|s| s.set(true)))
        .build()
        .unwrap();
    let listener = service_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = service_rt.spawn(async move {
        let service = aggregator::Service::prepare(cli.serve).await.expect("settings that work");
        service
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    let phones = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    phones.block_on(async {
        // The service made its CA and device key at start; wait for them.
        while !dir.path().join("ca.pem").exists() || !dir.path().join("device-token.key").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let settle = || tokio::time::sleep(Duration::from_millis(500));
        let mut held = Vec::new();
        for i in 0..WARM_UP {
            let mut ws = phone(addr, dir.path(), &format!("warm-{i}")).await;
            ws.send(Message::binary(vec![1u8; 4])).await.unwrap();
            wait_durable(&mut ws, 4).await;
            held.push(ws);
        }
        settle().await;
        let before = snapshot();
        let mut counted = Vec::new();
        for i in 0..PHONES {
            counted.push(phone(addr, dir.path(), &format!("idle-{i}")).await);
        }
        settle().await;
        let connected = snapshot();
        for ws in &mut counted {
            ws.send(Message::binary(vec![1u8; 4])).await.unwrap();
        }
        for ws in &mut counted {
            wait_durable(ws, 4).await;
        }
        settle().await;
        let used = snapshot();

        let (idle, parts) = per_phone(&before, &connected, PHONES);
        println!("per idle TLS phone, just connected: {idle} B of heap ({parts})");
        let (after_use, parts) = per_phone(&before, &used, PHONES);
        println!("per idle TLS phone, after a message each way: {after_use} B of heap ({parts})");
        assert!(idle <= BUDGET_PER_PHONE, "an idle TLS phone keeps {idle} B > {BUDGET_PER_PHONE} B");
        // And not next to nothing: a held TLS phone keeps at least its keys and its task (a
        // count of phones that were not held at all would pass the budget).
        assert!(idle >= MIN_PER_PHONE, "an idle TLS phone keeps only {idle} B: were the phones held?");
        assert!(
            after_use <= BUDGET_PER_PHONE,
            "an idle TLS phone keeps {after_use} B > {BUDGET_PER_PHONE} B after a message each way"
        );
        drop(counted);
        drop(held);
    });
    stop.send(()).unwrap();
    let result = service_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), running).await });
    assert!(matches!(result, Ok(Ok(Ok(())))), "the service stops: {result:?}");
}
