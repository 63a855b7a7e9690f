//! What one phone session costs in the host build, by parts: printed for docs/benchmarks.md, and
//! held to a budget so a change that makes phones heavier is noticed.

use gateway_core::hub::PhoneWaker;
use gateway_core::{Hub, PhoneConfig};
use trunk::gateway::{GatewayConfig, Identity, SessionSlot};

fn size_of_future<F: std::future::Future>(_: &F) -> usize {
    std::mem::size_of::<F>()
}

/// The size of one phone's task future (`gateway_core::phone::serve` on a kernel socket).
fn phone_future_size() -> usize {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let socket = edge_nal_std::TcpSocket::new(async_io::Async::new(stream).unwrap());
    let slots = Box::leak(Box::new([SessionSlot::FREE; 4]));
    let wakers: &mut [PhoneWaker] = Box::leak(Box::new([const { None }; 4]));
    let identity = Identity { gateway_id: b"g", secret: b"s", boot_epoch: 1 };
    let hub = Hub::new(GatewayConfig::default(), identity, 1, slots, wakers).unwrap();
    let config = PhoneConfig::default();
    let serve = gateway_core::phone::serve(socket, &hub, &config);
    size_of_future(&serve)
}

#[test]
fn a_phone_session_costs_about_one_kib_of_gateway_state() {
    let future = phone_future_size();
    let slot = std::mem::size_of::<SessionSlot>();
    let waker = std::mem::size_of::<PhoneWaker>();
    println!(
        "phone task future {future} B + session slot {slot} B + waker {waker} B = {} B",
        future + slot + waker
    );
    // The goal is 1 KiB per phone all told; the state alone is just above it (docs/benchmarks.md).
    // This bound catches growth.
    assert!(future + slot + waker <= 1100, "a phone's gateway state grew: {future} + {slot} + {waker}");
}

/// The figures docs/benchmarks.md gives for the parts of a phone's state ("Memory per idle phone
/// session in the host build"), as upper bounds: a part that grows must be noticed, and the
/// figures there measured again. Type sizes do not depend on the build profile.
const CONNECTION_BYTES: usize = 200;
const REQUEST_PARSER_BYTES: usize = 248;

#[test]
fn parts() {
    let connection = std::mem::size_of::<gateway_core::ws::Connection>();
    let parser = std::mem::size_of::<gateway_core::upgrade::RequestParser>();
    println!("ws::Connection {connection} B, upgrade::RequestParser {parser} B (only during the handshake)");
    // Zero would mean the state moved out of the type (to the heap, or a static shared by phones)
    // and these figures no longer say what a phone costs.
    assert!(connection > 0 && parser > 0, "{connection} B, {parser} B");
    assert!(connection <= CONNECTION_BYTES, "ws::Connection grew: {connection} B > {CONNECTION_BYTES} B");
    assert!(
        parser <= REQUEST_PARSER_BYTES,
        "upgrade::RequestParser grew: {parser} B > {REQUEST_PARSER_BYTES} B"
    );
    // Both live in the phone's task future (the parser during the handshake, the connection after
    // it), which the budget above holds: a part larger than the future would no longer be held
    // there, and that budget would miss it.
    let future = phone_future_size();
    assert!(connection < future && parser < future, "future {future} B");
}
