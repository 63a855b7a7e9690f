//! The host runtime (`host-runtime`), driven by its real loop on a thread of its own: timers
//! among 20,000 idle ones, a socket whose peer's bytes and FIN arrive together while its task
//! waits, and a wake from another thread while the executor sleeps with nothing due for minutes.
//! Only orderings and outcomes are asserted (never how fast): each check reports through a
//! channel, and a check that hangs fails the test after a generous limit.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::Duration as StdDuration;

use edge_nal::{Close, TcpAccept, TcpBind, TcpShutdown};
use embassy_executor::Spawner;
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use host_runtime::net::Stack;
use host_runtime::{self as runtime, RuntimeConfig};

/// Idle timers queued while the checks run (one task each, as phones have).
const IDLE_TIMERS: usize = 20_000;
/// How long the test waits for each check before calling it hung (generous: a loaded machine).
const LIMIT: StdDuration = StdDuration::from_secs(60);

#[embassy_executor::task(pool_size = IDLE_TIMERS)]
async fn idle() {
    Timer::after_secs(300).await;
}

static FLAG: AtomicBool = AtomicBool::new(false);
static WAITER: Mutex<Option<Waker>> = Mutex::new(None);

#[embassy_executor::task]
async fn checks(spawner: Spawner, report: Sender<String>) {
    for _ in 0..IDLE_TIMERS {
        spawner.spawn(idle().unwrap());
    }
    Timer::after_millis(10).await; // every idle task has run and queued its timer
    let queued = runtime::time::queued();
    report.send(format!("queued {}", queued >= IDLE_TIMERS)).unwrap();

    // A short timer among them wakes, and not before its time.
    let start = Instant::now();
    Timer::after_millis(30).await;
    report.send(format!("timer not early {}", start.elapsed() >= Duration::from_millis(30))).unwrap();

    // A peer's bytes and its FIN arrive together while the task waits to read: the bytes, then
    // end of file (a short read must not be taken for "drained" once the peer hung up).
    let listener = Stack.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        std::thread::sleep(StdDuration::from_millis(200)); // the task is parked on its read by now
                                                           // Corked: the bytes and the FIN leave in one segment, so epoll reports them in one event.
        rustix::net::sockopt::set_tcp_cork(&s, true).unwrap();
        s.write_all(b"abc").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        answer
    });
    let (_, mut socket) = listener.accept().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    report.send(format!("read {}", String::from_utf8_lossy(&got))).unwrap();
    socket.write_all(b"ok").await.unwrap();
    socket.close(Close::Write).await.unwrap();
    let answer = embassy_futures_free::join_thread(client).await;
    report.send(format!("peer read {}", String::from_utf8_lossy(&answer))).unwrap();
    drop(socket);

    // A wake from another thread while nothing is due for minutes: the executor sleeps in
    // epoll_wait and must be woken.
    std::thread::spawn(|| {
        std::thread::sleep(StdDuration::from_millis(100));
        FLAG.store(true, Ordering::SeqCst);
        if let Some(w) = WAITER.lock().unwrap().take() {
            w.wake();
        }
    });
    core::future::poll_fn(|cx| {
        *WAITER.lock().unwrap() = Some(cx.waker().clone());
        if FLAG.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    report.send("woken from another thread".into()).unwrap();
}

/// Waiting for a std thread without blocking the executor: polls its `is_finished` on a timer.
mod embassy_futures_free {
    use embassy_time::Timer;

    pub async fn join_thread<T>(handle: std::thread::JoinHandle<T>) -> T {
        while !handle.is_finished() {
            Timer::after_millis(5).await;
        }
        handle.join().unwrap()
    }
}

#[test]
fn timers_sockets_and_cross_thread_wakes_on_the_runtime() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = runtime::run(RuntimeConfig::DEFAULT, |spawner| spawner.spawn(checks(spawner, tx).unwrap()));
    });
    let expect =
        ["queued true", "timer not early true", "read abc", "peer read ok", "woken from another thread"];
    for want in expect {
        let got = rx.recv_timeout(LIMIT).unwrap_or_else(|_| panic!("hung before: {want}"));
        assert_eq!(got, want);
    }
}
