//! The server's edge against hostile clients and models (kiln issue 20): slow, stuck and
//! half-closed sockets, malformed bodies, wrong methods, unknown roles and chat templates that
//! run long or fail. Raw-socket clients talk to 127.0.0.1 only, with bounded reads.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use kiln_engine::scheduler::SchedulerConfig;
use kiln_server::ServerOptions;
use serde_json::{json, Value};

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        slots: 2,
        context: 256,
        max_queue: 16,
        prefill_chunk: 7,
        prefix_cache: 2,
    }
}

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// What a raw client does after sending its bytes.
#[derive(Clone, Copy)]
enum Then {
    /// Keeps its write side open (a stuck or slow client).
    Hold,
    /// Shuts down its write side and waits for the reply.
    HalfClose,
}

/// Sends `bytes` on a fresh connection, then reads until the server closes it or `wait` passes.
/// Returns what was read and whether the server closed the connection within `wait`.
async fn raw(addr: String, bytes: Vec<u8>, then: Then, wait: Duration) -> (String, bool) {
    tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(&bytes).unwrap();
        if let Then::HalfClose = then {
            c.shutdown(Shutdown::Write).unwrap();
        }
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (String::from_utf8_lossy(&got).into_owned(), false);
            }
            c.set_read_timeout(Some(left)).unwrap();
            match c.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // A reset also means the server let go of the connection.
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
            }
        }
    })
    .await
    .unwrap()
}

/// The status and JSON body of a raw HTTP/1.1 response (`Connection: close` bodies only).
fn parse_response(raw: &str) -> (u16, Value) {
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut out = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n").expect("chunk size line");
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_string()
    };
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {raw:?}"));
    (status, v)
}

fn assert_error(v: &Value, kind: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

fn post_head(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_disconnected() {
    let s = start_fake(
        cfg(),
        ServerOptions {
            header_timeout: Duration::from_millis(400),
            ..fake_opts()
        },
        Duration::ZERO,
    )
    .await;
    let t = Instant::now();
    // Headers that never end.
    let (_, closed) = raw(
        addr(&s),
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Le".to_vec(),
        Then::Hold,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        closed,
        "the server kept a connection with unfinished headers"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_gets_408() {
    let s = start_fake(
        cfg(),
        ServerOptions {
            body_timeout: Duration::from_millis(400),
            ..fake_opts()
        },
        Duration::ZERO,
    )
    .await;
    let mut req = post_head("/v1/completions", "Content-Length: 100\r\n").into_bytes();
    req.extend_from_slice(br#"{"prompt": "#);
    let t = Instant::now();
    let (resp, _) = raw(addr(&s), req, Then::Hold, Duration::from_secs(10)).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 408, "{resp}");
    assert_error(&v, "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_read_errors_get_their_own_status() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    // A Content-Length longer than the body, then the client's write side closes: 400.
    let mut req = post_head("/v1/completions", "Content-Length: 100\r\n").into_bytes();
    req.extend_from_slice(br#"{"prompt": "abc"}"#);
    let (resp, _) = raw(addr(&s), req, Then::HalfClose, Duration::from_secs(10)).await;
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 400, "{resp}");
    assert_error(&v, "invalid_request_error");
    assert!(
        !v["error"]["message"].as_str().unwrap().contains("limit"),
        "{v}"
    );

    // A malformed chunk size: 400, not 413.
    let mut req = post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(b"zz\r\n{}\r\n0\r\n\r\n");
    let (resp, _) = raw(addr(&s), req, Then::Hold, Duration::from_secs(10)).await;
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 400, "{resp}");
    assert_error(&v, "invalid_request_error");

    // Too large, chunked (no Content-Length to refuse up front): still 413.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(70 * 1024));
    let mut req = post_head("/v1/completions", "Transfer-Encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes());
    let (resp, _) = raw(addr(&s), req, Then::Hold, Duration::from_secs(10)).await;
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 413, "{resp}");
    assert_eq!(v["error"]["code"], "request_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_request_gets_its_reply() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let body = json!({"prompt": [3, 1, 4], "max_tokens": 4, "temperature": 0}).to_string();
    let mut req = post_head(
        "/v1/completions",
        &format!("Content-Length: {}\r\n", body.len()),
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    let (resp, closed) = raw(addr(&s), req, Then::HalfClose, Duration::from_secs(10)).await;
    assert!(closed);
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        v["choices"][0]["token_ids"],
        json!(reference_greedy(&[3, 1, 4], 4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_a_reply_that_takes_long() {
    // 2 ms a step, 300 steps: the client's side has ended long before the answer is ready.
    let s = start_fake(
        SchedulerConfig {
            context: 512,
            ..cfg()
        },
        fake_opts(),
        Duration::from_millis(2),
    )
    .await;
    let body =
        json!({"prompt": [3, 1, 4], "max_tokens": 300, "ignore_eos": true, "temperature": 0})
            .to_string();
    let mut req = post_head(
        "/v1/completions",
        &format!("Content-Length: {}\r\n", body.len()),
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    let (resp, closed) = raw(addr(&s), req, Then::HalfClose, Duration::from_secs(30)).await;
    assert!(closed);
    let (status, v) = parse_response(&resp);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(v["choices"][0]["token_ids"].as_array().unwrap().len(), 300);
    let stats = s.state.scheduler.stats();
    assert_eq!((stats.finished, stats.cancelled), (1, 0));
}

#[tokio::test]
async fn wrong_method_is_405_in_openai_shape() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let r = reqwest::Client::new()
        .get(s.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("GET"),
        "{v}"
    );
}

#[tokio::test]
async fn unknown_role_is_400_naming_it() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("wizard"),
        "{v}"
    );
    assert_eq!(v["error"]["param"], "messages");
}

#[tokio::test]
async fn a_failing_template_is_a_500() {
    let s = start_fake_with_template(
        cfg(),
        fake_opts(),
        Duration::ZERO,
        Some("{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}".into()),
    )
    .await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_error(&v, "server_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat template"),
        "{v}"
    );
}

/// 2e7 loop steps: seconds of work (about 6 s on a loaded 2-core machine), far past the test's
/// template deadline, yet finite, so the render threads it leaves behind end soon after. A
/// renderer with a step limit fails it sooner. Either way it is that request's 500, and the
/// rest of the server carries on.
const SLOW_TEMPLATE: &str =
    "{% for i in range(100000) %}{% for j in range(200) %}{% endfor %}{% endfor %}{{ messages[0].content }}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_during_hostile_template_requests() {
    let s = start_fake_with_template(
        cfg(),
        ServerOptions {
            template_timeout: Duration::from_millis(500),
            ..fake_opts()
        },
        Duration::ZERO,
        Some(SLOW_TEMPLATE.into()),
    )
    .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // More hostile requests than the runtime has worker threads (as in the issue's report).
    let chats: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), s.url("/v1/chat/completions"));
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .json(
                        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
                    )
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut polls = 0;
    while !chats.iter().all(|h| h.is_finished()) {
        let t = Instant::now();
        let r = health.get(s.url("/health")).send().await;
        let took = t.elapsed();
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == 200),
            "/health failed after {took:?} during hostile template requests: {r:?}"
        );
        assert!(took < Duration::from_secs(1), "/health took {took:?}");
        polls += 1;
        assert!(polls < 400, "the hostile requests did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in chats {
        let (status, v) = h.await.unwrap();
        assert_eq!(status, 500, "{v}");
        assert_error(&v, "server_error");
    }
    // The server still generates (its chat template is the hostile one: use a completion).
    let r = c
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": [1, 2], "max_tokens": 2, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_stuck_connections_at_the_drain_deadline() {
    let mut s = start_fake(
        cfg(),
        ServerOptions {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_millis(500),
            ..fake_opts()
        },
        Duration::ZERO,
    )
    .await;
    let partial_headers = tokio::spawn(raw(
        addr(&s),
        b"POST /v1/completions HTTP/1.1\r\nHost: te".to_vec(),
        Then::Hold,
        Duration::from_secs(20),
    ));
    let mut half_body = post_head("/v1/completions", "Content-Length: 100\r\n").into_bytes();
    half_body.extend_from_slice(b"{\"prompt\"");
    let partial_body = tokio::spawn(raw(
        addr(&s),
        half_body,
        Then::Hold,
        Duration::from_secs(20),
    ));
    // Let both connections reach the server before it is told to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    s.shutdown.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut s.task)
        .await
        .expect("the server did not stop within the drain deadline")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(partial_headers.await.unwrap().1, "connection left open");
    assert!(partial_body.await.unwrap().1, "connection left open");
}
