//! Tier 3: the daemon's HTTP serving (API socket, `api_listen`, `metrics_listen`) against
//! clients that misbehave: silent connections, chunked bodies, pipelined requests. Each test
//! runs `xdplb run` on `lo` of a namespace it creates; needs root.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use xdplb_test_support::{netns::*, require_root};

/// The binary under test (the test-support crate cannot name it: only this crate's tests can).
const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

const START: Duration = Duration::from_secs(20);
/// The server's header-read timeout (`xdplb::http::HEADER_READ_TIMEOUT`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const METRICS: &str = "127.0.0.1:9100";
const API_TCP: &str = "127.0.0.1:9180";

/// A running daemon on `lo` of its own namespace, with metrics and the TCP API on.
struct Running {
    ns: Netns,
    dir: String,
    instance: String,
    daemon: Daemon,
}

impl Running {
    fn start(tag: &str) -> Self {
        require_root();
        let ns = Netns::new(tag);
        let dir = std::env::temp_dir()
            .join(format!("xdplb-test-{tag}-{}", std::process::id()))
            .display()
            .to_string();
        std::fs::create_dir_all(&dir).expect("create run dir");
        let instance = format!("t-{tag}-{}", std::process::id());
        let cfg_path = format!("{dir}/http.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "interfaces = [\"lo\"]\nmetrics_listen = \"{METRICS}\"\napi_listen = \"{API_TCP}\"\n\
                 [[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
                 [[service.backend]]\naddress = \"127.0.0.1:9876\"\n"
            ),
        )
        .expect("write config");
        let mut prefix = ns.prefix();
        prefix.extend(
            [
                "env",
                &format!("XDPLB_RUN_DIR={dir}"),
                XDPLB,
                "run",
                "--cleanup",
                "--config",
                &cfg_path,
                "--instance",
                &instance,
            ]
            .map(String::from),
        );
        let mut daemon = Daemon::spawn(&prefix);
        daemon.wait_for("running instance", START);
        Running {
            ns,
            dir,
            instance,
            daemon,
        }
    }

    fn socket(&self) -> String {
        format!("{}/{}.sock", self.dir, self.instance)
    }

    fn unix(&self) -> UnixStream {
        let s = UnixStream::connect(self.socket()).expect("connect to the API socket");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        s
    }

    /// Connects to `addr` inside the daemon's namespace (the socket stays usable from any
    /// thread afterwards).
    fn tcp(&self, addr: &str) -> TcpStream {
        let addr = addr.to_string();
        let s = in_netns(&self.ns.name, move || {
            TcpStream::connect(&addr).expect("connect in the namespace")
        });
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.daemon.child.is_some() && !std::thread::panicking() {
            let status = self.daemon.terminate(Duration::from_secs(10));
            assert!(status.success(), "exit 0 on SIGTERM: {status}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread that entered the network namespace `ns` (setns(2) moves only the
/// calling thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("the namespace thread")
}

/// Writes `request` and reads until the server closes: the time to the whole answer, and the
/// answer.
fn exchange(mut conn: impl Read + Write, request: &[u8]) -> (Duration, String) {
    let started = Instant::now();
    conn.write_all(request).expect("write the request");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).expect("read the answer");
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).to_string(),
    )
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: xdplb\r\nConnection: close\r\n\r\n").into_bytes()
}

fn status_lines(answer: &str) -> Vec<&str> {
    answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect()
}

#[test]
fn fifty_silent_clients_do_not_hold_up_the_api_or_the_metrics() {
    let lb = Running::start("hs");
    // 50 connections on each listener that send nothing.
    let silent_unix: Vec<UnixStream> = (0..50).map(|_| lb.unix()).collect();
    let silent_metrics: Vec<TcpStream> = (0..50).map(|_| lb.tcp(METRICS)).collect();
    let held_since = Instant::now();

    let bound = Duration::from_millis(100);
    let mut api_times = Vec::new();
    let mut scrape_times = Vec::new();
    for _ in 0..5 {
        let (took, answer) = exchange(lb.unix(), &get("/v1/status"));
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("\"generation\""),
            "GET /v1/status: {answer}"
        );
        api_times.push(took);
        let (took, answer) = exchange(lb.tcp(METRICS), &get("/metrics"));
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("xdplb_"),
            "GET /metrics: {answer}"
        );
        scrape_times.push(took);
    }
    // The CLI through its hyper client, as an operator runs it (process start included).
    let cli_started = Instant::now();
    let out = lb.ns.exec(&[
        "env",
        &format!("XDPLB_RUN_DIR={}", lb.dir),
        XDPLB,
        "status",
        "--instance",
        &lb.instance,
    ]);
    let cli_took = cli_started.elapsed();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("demo"),
        "xdplb status: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "with 50 silent clients on the API socket and 50 on the metrics listener: \
         GET /v1/status {api_times:?}, GET /metrics {scrape_times:?}, \
         `ip netns exec … xdplb status` {cli_took:?}"
    );
    assert!(
        held_since.elapsed() < HEADER_READ_TIMEOUT,
        "the measurements must happen while the silent clients are still held ({:?})",
        held_since.elapsed()
    );
    for (what, times) in [
        ("GET /v1/status", &api_times),
        ("GET /metrics", &scrape_times),
    ] {
        let worst = times.iter().max().copied().unwrap_or_default();
        assert!(
            worst < bound,
            "{what} took {worst:?} (all: {times:?}) with 50 silent clients; expected under {bound:?}"
        );
    }

    // The silent clients are closed by the server after its header-read timeout.
    let mut first = silent_unix.into_iter().next().expect("a silent client");
    first
        .set_read_timeout(Some(HEADER_READ_TIMEOUT * 3))
        .expect("timeout");
    let mut rest = Vec::new();
    let read = first.read_to_end(&mut rest);
    let closed_after = held_since.elapsed();
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the server closes a silent connection, it does not leave it open: {read:?} after {closed_after:?}"
    );
    assert!(
        closed_after >= HEADER_READ_TIMEOUT.saturating_sub(Duration::from_millis(500))
            && closed_after < HEADER_READ_TIMEOUT * 2,
        "a silent client is dropped after the {HEADER_READ_TIMEOUT:?} header-read timeout, not after {closed_after:?}"
    );
    let mut metrics_conn = silent_metrics.into_iter().next().expect("a silent client");
    let mut rest = Vec::new();
    let read = metrics_conn.read_to_end(&mut rest);
    assert!(
        read.is_ok() && held_since.elapsed() < HEADER_READ_TIMEOUT * 2,
        "the metrics listener closes a silent client too: {read:?} after {:?}",
        held_since.elapsed()
    );
    eprintln!("silent clients closed after {closed_after:?}");
}

#[test]
fn chunked_bodies_pipelined_requests_and_probes_are_answered() {
    let lb = Running::start("hc");

    // A chunked body, in two chunks.
    let body = "{\"address\":\"127.0.0.1:9878\",\"weight\":2}";
    let (a, b) = body.split_at(10);
    let chunked = format!(
        "POST /v1/services/demo/backends HTTP/1.1\r\nHost: xdplb\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let (_, answer) = exchange(lb.unix(), chunked.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"change\""),
        "a chunked POST is read whole and applied: {answer}"
    );
    let (_, listed) = exchange(lb.unix(), &get("/v1/services/demo/backends"));
    assert!(
        listed.contains("127.0.0.1:9878"),
        "the backend from the chunked body is there: {listed}"
    );

    // Two requests in one write on one connection: both answered, in order.
    let pipelined = "GET /v1/services HTTP/1.1\r\nHost: xdplb\r\n\r\n\
                     GET /v1/services/demo/backends HTTP/1.1\r\nHost: xdplb\r\nConnection: close\r\n\r\n";
    let (_, answer) = exchange(lb.unix(), pipelined.as_bytes());
    assert_eq!(
        status_lines(&answer),
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
        "both pipelined requests are answered: {answer}"
    );
    let (first, second) = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, rest)| rest.split_once("HTTP/1.1 200"))
        .expect("two answers");
    assert!(
        first.contains("\"demo\"") && second.contains("127.0.0.1:9878"),
        "in order: {answer}"
    );

    // Bare LF line ends are read too.
    let (_, answer) = exchange(
        lb.unix(),
        b"GET /v1/services HTTP/1.1\nHost: xdplb\nConnection: close\n\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "bare LF: {answer}");

    // Unknown paths keep their JSON errors.
    let (_, answer) = exchange(lb.unix(), &get("/v2/nothing"));
    assert!(
        answer.starts_with("HTTP/1.1 404") && answer.contains("\"error\""),
        "unknown path: {answer}"
    );

    // A body over the limit is refused with a JSON error, and nothing changes.
    let body_of = |answer: &str| answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    let (_, before) = exchange(lb.unix(), &get("/v1/services/demo/backends"));
    let big = format!(
        "POST /v1/services/demo/backends HTTP/1.1\r\nHost: xdplb\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        (1 << 20) + 1
    );
    let mut conn = lb.unix();
    conn.write_all(big.as_bytes()).expect("write");
    // Refused on its announced length, before the body is sent.
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("limit"),
        "over the body limit: {answer}"
    );
    let (_, after) = exchange(lb.unix(), &get("/v1/services/demo/backends"));
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    assert_eq!(
        body_of(&after),
        body_of(&before),
        "the refused body changed nothing"
    );

    // The probes answer on the socket, the TCP API listener and the metrics listener.
    for path in ["/healthz", "/readyz"] {
        let answers = [
            ("API socket", exchange(lb.unix(), &get(path)).1),
            ("api_listen", exchange(lb.tcp(API_TCP), &get(path)).1),
            ("metrics_listen", exchange(lb.tcp(METRICS), &get(path)).1),
        ];
        for (listener, answer) in answers {
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{path} on the {listener}: {answer}"
            );
        }
    }
    let (_, ready) = exchange(lb.unix(), &get("/readyz"));
    assert!(ready.contains("\"ready\": true"), "{ready}");
}
