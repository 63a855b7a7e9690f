//! What one phone session costs in the host build, by parts: printed for docs/benchmarks.md, and
//! held to a budget so a change that makes phones heavier is noticed.

use gateway_core::hub::PhoneWaker;
use host_runtime::net::TcpSocket;
use host_runtime::reactor::{Reactor, SLOT_BYTES};
use std::cell::RefCell;

use gateway_core::phone::Phones;
use gateway_core::upgrade::RequestParser;
use gateway_core::{Hub, PhoneConfig};
use trunk::gateway::{GatewayConfig, Identity, SessionSlot};

fn size_of_future<F: std::future::Future>(_: &F) -> usize {
    std::mem::size_of::<F>()
}

/// What the executor reserves per phone task: the task header (with its timer item) and the future.
fn size_of_task<F: std::future::Future + 'static>(_: &F) -> usize {
    std::mem::size_of::<embassy_executor::raw::TaskStorage<F>>()
}

/// (the phone's task future, the task with its header) for `gateway_core::phone::serve` on a
/// socket of the host runtime. Installs this thread's reactor.
fn phone_task_sizes() -> (usize, usize) {
    let notify = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    Reactor::install(&notify).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let socket = TcpSocket::from_std(stream).unwrap();
    let slots = Box::leak(Box::new([SessionSlot::FREE; 4]));
    let wakers: &mut [PhoneWaker] = Box::leak(Box::new([const { None }; 4]));
    let identity = Identity { gateway_id: b"g", secret: b"s", boot_epoch: 1 };
    let hub: &'static Hub<'static> =
        Box::leak(Box::new(Hub::new(GatewayConfig::default(), identity, 1, slots, wakers).unwrap()));
    let config: &'static PhoneConfig = Box::leak(Box::new(PhoneConfig::default()));
    let parsers = Box::leak(Box::new([RefCell::new(RequestParser::new(0))]));
    let phones: &'static Phones<'static, 'static> =
        Box::leak(Box::new(Phones::new(hub, config, None, parsers)));
    let socket = Box::leak(Box::new(socket));
    let serve = gateway_core::phone::serve(socket, phones);
    (size_of_future(&serve), size_of_task(&serve))
}

#[test]
fn a_phone_session_costs_at_most_one_kib_of_gateway_state() {
    let (future, task) = phone_task_sizes();
    let slot = std::mem::size_of::<SessionSlot>();
    let waker = std::mem::size_of::<PhoneWaker>();
    let total = task + slot + waker + SLOT_BYTES;
    println!(
        "phone task {task} B (future {future} B, header {} B) + session slot {slot} B + waker {waker} B \
         + reactor slot {SLOT_BYTES} B = {total} B",
        task - future
    );
    // The goal (issue #17): at most 1 KiB of memory per idle phone, everything counted. The
    // kernel's socket buffers are not the process's memory.
    assert!(total <= 1024, "a phone's gateway state grew: {total} B");
}

/// The figures docs/benchmarks.md gives for the parts of a phone's state ("Memory per idle phone
/// session in the host build"), as upper bounds: a part that grows must be noticed, and the
/// figures there measured again. Type sizes do not depend on the build profile.
const CONNECTION_BYTES: usize = 80;
const REQUEST_PARSER_BYTES: usize = 400;

#[test]
fn parts() {
    let connection = std::mem::size_of::<gateway_core::ws::Connection>();
    let parser = std::mem::size_of::<gateway_core::upgrade::RequestParser>();
    println!("ws::Connection {connection} B, upgrade::RequestParser {parser} B (borrowed from a shared pool during the handshake)");
    // Zero would mean the state moved out of the type (to the heap, or a static shared by phones)
    // and these figures no longer say what a phone costs.
    assert!(connection > 0 && parser > 0, "{connection} B, {parser} B");
    assert!(connection <= CONNECTION_BYTES, "ws::Connection grew: {connection} B > {CONNECTION_BYTES} B");
    assert!(
        parser <= REQUEST_PARSER_BYTES,
        "upgrade::RequestParser grew: {parser} B > {REQUEST_PARSER_BYTES} B"
    );
    // The connection lives in the phone's task future, which the budget above holds: a part
    // larger than the future would no longer be held there, and that budget would miss it. The
    // parser is not a phone's: it is borrowed from the pool (`gateway::gateway::PARSERS`).
    let (future, _) = phone_task_sizes();
    assert!(connection < future, "future {future} B");
}
