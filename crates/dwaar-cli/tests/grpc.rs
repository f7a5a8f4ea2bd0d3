// gRPC through Dwaar: an h2c client to an h2c listener, proxied to an h2c gRPC service,
// with trailers, statuses and a bidirectional stream preserved (and never compressed).

mod common;
use common::*;
use dwaar_testkit::grpc;

fn serve_grpc() -> (Dwaar, u16) {
    let upstream = grpc::echo_server();
    let port = free_port();
    let conf = format!(
        "{{\n\tservers :{port} {{\n\t\tprotocols h1 h2c\n\t}}\n}}\n:{port} {{\n\tencode gzip {{\n\t\tminimum_length 1\n\t}}\n\treverse_proxy h2c://127.0.0.1:{upstream}\n}}\n"
    );
    (Dwaar::start(&bin(), &conf, &[port]), port)
}

#[test]
fn unary_calls_keep_trailers_and_status() {
    let (_d, port) = serve_grpc();
    let c =
        grpc::call(port, "/echo.Echo/Say", &[b"hello"], false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.status, 200);
    assert_eq!(
        c.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert!(
        c.headers.get("content-encoding").is_none(),
        "gRPC is never compressed"
    );
    assert_eq!(
        c.headers.get("x-saw-te-trailers").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(c.messages, vec![b"echo: hello".to_vec()]);
    let t = c.trailers.unwrap_or_else(|| panic!("no trailers"));
    assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(
        t.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"done"[..])
    );
}

#[test]
fn bidirectional_streams_are_not_buffered() {
    let (_d, port) = serve_grpc();
    let msgs: Vec<Vec<u8>> = (0..5).map(|i| format!("m{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let c = grpc::call(port, "/echo.Echo/Chat", &refs, true).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.interleaved,
        "a reply did not arrive before the next message was sent"
    );
    assert_eq!(c.messages.len(), 5, "{:?}", c.messages);
    assert_eq!(c.messages[4], b"echo: m4".to_vec());
    let t = c.trailers.unwrap_or_else(|| panic!("no trailers"));
    assert_eq!(t.get("x-count").map(|v| v.as_bytes()), Some(&b"5"[..]));
}

#[test]
fn a_burst_to_an_h2c_upstream_shares_its_connection() {
    let o = origin::h2c("mux");
    let port = free_port();
    let conf = format!(
        ":{port} {{\n\treverse_proxy h2c://127.0.0.1:{}\n}}\n",
        o.port
    );
    let _d = Dwaar::start(&bin(), &conf, &[port]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                ok_get(port, "x", "/burst").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap_or(0), 200);
    }
    assert_eq!(o.hits(), 100);
    assert!(
        o.connections() <= 2,
        "{} upstream connections for 100 concurrent requests",
        o.connections()
    );
}
