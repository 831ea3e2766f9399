//! `socket` (hostile): tries to reach the network.
//!
//! Connects over TCP to `127.0.0.1:6379` and binds a UDP socket on
//! `0.0.0.0:0`, then returns its args plus `tcp` and `udp`, each set to the
//! error of its attempt (e.g. `access-denied (error 1)`), or to `connected`
//! if the attempt succeeded. Demonstrates a handler reaching for the network.
//! Expected: the host grants no network access, so both attempts are refused
//! and the task succeeds with the two errors (a host that links no
//! `wasi:sockets` at all refuses the component at instantiation instead).
//!
//! The job calls `wasi:sockets` directly rather than through `std::net`,
//! which on `wasm32-wasip2` needs wasi-libc's socket layer; Debian 12's
//! wasi-libc predates it, so `std::net` would not link there. The host sees
//! the same imports either way.

use corral_guest::{Args, Context, Error, Output, export_handler};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use wasip2::sockets::tcp_create_socket::create_tcp_socket;
use wasip2::sockets::udp_create_socket::create_udp_socket;

const TCP_TARGET: Ipv4SocketAddress = Ipv4SocketAddress {
    port: 6379,
    address: (127, 0, 0, 1),
};
const UDP_LOCAL: Ipv4SocketAddress = Ipv4SocketAddress {
    port: 0,
    address: (0, 0, 0, 0),
};

fn socket(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let tcp = outcome(tcp_connect());
    let udp = outcome(udp_bind());
    let log = format!("tcp: {tcp}; udp: {udp}");
    args.insert("tcp", &tcp)?;
    args.insert("udp", &udp)?;
    Ok(Output::new(args).log(log))
}

/// `TcpStream::connect("127.0.0.1:6379")`, spelled in `wasi:sockets`.
fn tcp_connect() -> Result<(), ErrorCode> {
    let network = instance_network();
    let socket = create_tcp_socket(IpAddressFamily::Ipv4)?;
    socket.start_connect(&network, IpSocketAddress::Ipv4(TCP_TARGET))?;
    let ready = socket.subscribe();
    loop {
        match socket.finish_connect() {
            Ok(_streams) => return Ok(()),
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(e) => return Err(e),
        }
    }
}

/// `UdpSocket::bind("0.0.0.0:0")`, spelled in `wasi:sockets`.
fn udp_bind() -> Result<(), ErrorCode> {
    let network = instance_network();
    let socket = create_udp_socket(IpAddressFamily::Ipv4)?;
    socket.start_bind(&network, IpSocketAddress::Ipv4(UDP_LOCAL))?;
    let ready = socket.subscribe();
    loop {
        match socket.finish_bind() {
            Ok(()) => return Ok(()),
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(e) => return Err(e),
        }
    }
}

fn outcome(result: Result<(), ErrorCode>) -> String {
    match result {
        Ok(()) => "connected".to_owned(),
        Err(e) => e.to_string(),
    }
}

export_handler!(socket);
