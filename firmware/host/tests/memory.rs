//! What one phone session costs in the host build, by parts: printed for docs/benchmarks.md, and
//! held to a budget so a change that makes phones heavier is noticed.

use gateway_core::hub::PhoneWaker;
use gateway_core::{Hub, PhoneConfig};
use trunk::gateway::{GatewayConfig, Identity, SessionSlot};

fn size_of_future<F: std::future::Future>(_: &F) -> usize {
    std::mem::size_of::<F>()
}

#[test]
fn a_phone_session_costs_about_one_kib_of_gateway_state() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let socket = edge_nal_std::TcpSocket::new(async_io::Async::new(stream).unwrap());
    let slots = Box::leak(Box::new([SessionSlot::FREE; 4]));
    let wakers: &mut [PhoneWaker] = Box::leak(Box::new([const { None }; 4]));
    let identity = Identity { gateway_id: b"g", secret: b"s", boot_epoch: 1 };
    let hub = Hub::new(GatewayConfig::default(), identity, 1, slots, wakers).unwrap();
    let config = PhoneConfig::default();
    let serve = gateway_core::phone::serve(socket, &hub, &config);
    let future = size_of_future(&serve);
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

#[test]
fn parts() {
    println!(
        "ws::Connection {} B, upgrade::RequestParser {} B (only during the handshake)",
        std::mem::size_of::<gateway_core::ws::Connection>(),
        std::mem::size_of::<gateway_core::upgrade::RequestParser>(),
    );
}
