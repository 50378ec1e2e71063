//! TLS on real nodes: mutual TLS on the peer listener, HTTPS on the client listener, and
//! the start-up refusals (expired or not-yet-valid certificates, key files others can
//! read). Certificates are issued at run time into each test's temporary directory.

mod support;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::cluster::{CLUSTER_KEY, TestCluster, without_scheme};
use support::{ADMIN_KEY, NodeProcess, WRITE_KEY, get, send};
use tandem::tls::issue::{Ca, write_file};

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

const DAY: i64 = 86_400;

/// A CA's certificate file and one identity it issued (certificate chain, key 0600).
struct Issued {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Issues a CA named `name` and one certificate for 127.0.0.1 valid `from`..`until`
/// (Unix seconds), into `dir/name-*`.
fn issue(dir: &Path, name: &str, from: i64, until: i64) -> Issued {
    let ca = Ca::new(name, now_secs() - DAY, now_secs() + 30 * DAY).expect("CA");
    let (chain, key) = ca
        .issue(name, &["127.0.0.1", "localhost"], from, until)
        .expect("certificate");
    let issued = Issued {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    write_file(&issued.ca, &ca.cert_pem, false).expect("write");
    write_file(&issued.cert, &chain, false).expect("write");
    write_file(&issued.key, &key, true).expect("write");
    issued
}

fn valid(dir: &Path, name: &str) -> Issued {
    issue(dir, name, now_secs() - DAY, now_secs() + 30 * DAY)
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// The environment giving a node `issued` as its peer identity and CA.
fn peer_env(issued: &Issued) -> Vec<(&'static str, String)> {
    vec![
        ("TANDEM_TLS__PEER_CERT_FILE", text(&issued.cert)),
        ("TANDEM_TLS__PEER_KEY_FILE", text(&issued.key)),
        ("TANDEM_TLS__PEER_CA_FILE", text(&issued.ca)),
        ("TANDEM_CLUSTER__CLUSTER_KEY", CLUSTER_KEY.to_owned()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A client trusting `ca`, presenting `identity` (certificate, key) if given.
fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    tls_client_alpn(ca, identity, &[b"h2", b"http/1.1"])
}

/// Like [`tls_client`], offering only `alpn`.
fn tls_client_alpn(ca: &Path, identity: Option<(&Path, &Path)>, alpn: &[&[u8]]) -> reqwest::Client {
    let roots = tandem::tls::load_roots(ca).expect("roots");
    let identity = identity
        .map(|(cert, key)| tandem::tls::Identity::load(cert, key, now_secs()).expect("identity"));
    let config = tandem::tls::client_config(roots, identity.as_ref(), alpn).expect("client config");
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// POSTs an empty read-index request with the cluster key and `node`'s cluster id (as a
/// peer of its cluster would) to `peer_url`; the status, or the error.
async fn read_index(
    client: &reqwest::Client,
    node: &NodeProcess,
    peer_url: &str,
) -> Result<u16, String> {
    let cluster = std::fs::read_to_string(node.data_dir.join("CLUSTER")).unwrap_or_default();
    client
        .post(format!("{peer_url}/internal/read-index"))
        .bearer_auth(CLUSTER_KEY)
        .header("x-tandem-from", "2")
        .header("x-tandem-cluster", cluster.trim())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_over_mutual_tls_elects_and_replicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    for (id, peer_url) in &cluster.peer_urls {
        assert!(peer_url.starts_with("https://"), "node {id}: {peer_url}");
    }
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let (_, view) = support::cluster::admin_get(&cluster.urls[&leader], "/v1/admin/cluster").await;
    for member in view["members"].as_array().expect("members") {
        let id = member["id"].as_u64().expect("id");
        assert_eq!(member["peer_url"], cluster.peer_urls[&id], "{view}");
        assert_eq!(member["url"], cluster.urls[&id], "{view}");
    }
    // A write on a follower is forwarded to the leader over the peer listener.
    let follower = *cluster
        .urls
        .keys()
        .find(|id| **id != leader)
        .expect("follower");
    let batch = json!({"batch": (0..20).map(|i| json!({
        "type": "track", "userId": format!("tls-{i}"), "event": "Order Completed",
        "messageId": format!("tls-m-{i}"),
    })).collect::<Vec<_>>()});
    let reply = support::post(&cluster.urls[&follower], "/v1/batch", &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    cluster.converged_hash(Duration::from_secs(30)).await;
    for url in cluster.urls.values() {
        let profile = get(url, "/v1/profiles/user_id:tls-7?consistency=local").await;
        assert_eq!(profile.status, 200, "{url}: {}", profile.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_whoever_lacks_a_cluster_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster_pki = support::cluster::issue_certificates(dir.path());
    let files = cluster_pki.node(1).expect("node 1");
    let node_identity = Issued {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    };
    let env = peer_env(&node_identity);
    let node = NodeProcess::start(&dir.path().join("node"), &borrowed(&env));
    assert!(node.peer_url.starts_with("https://"), "{}", node.peer_url);

    // The control: a cluster certificate (node 2's) and the key get an answer.
    let node2 = cluster_pki.node(2).expect("node 2");
    let member = tls_client(&files.ca, Some((&node2.cert, &node2.key)));
    assert_eq!(read_index(&member, &node, &node.peer_url).await, Ok(200));

    // No client certificate: the handshake is refused.
    let anonymous = tls_client(&files.ca, None);
    let refused = read_index(&anonymous, &node, &node.peer_url).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // A certificate from another CA (trusting the right server all the same).
    let stranger = valid(dir.path(), "stranger");
    let other_ca = tls_client(&files.ca, Some((&stranger.cert, &stranger.key)));
    let refused = read_index(&other_ca, &node, &node.peer_url).await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");
    // Plain HTTP to the peer port.
    let plain_url = node.peer_url.replacen("https://", "http://", 1);
    let refused = read_index(&support::client(), &node, &plain_url).await;
    assert!(
        refused.as_ref().map_or(true, |status| *status != 200),
        "plain HTTP: {refused:?}"
    );
    // And a client that trusts another CA does not accept the node as a server.
    let wrong_roots = tls_client(&stranger.ca, Some((&node2.cert, &node2.key)));
    assert!(
        read_index(&wrong_roots, &node, &node.peer_url)
            .await
            .is_err()
    );

    // Peer routes are not on the client port; the node is unharmed and still serves.
    let on_client_port = send(
        support::client()
            .post(format!("{}/internal/read-index", node.url))
            .bearer_auth(CLUSTER_KEY),
    )
    .await;
    assert_eq!(on_client_port.status, 404, "{}", on_client_port.body);
    assert_eq!(read_index(&member, &node, &node.peer_url).await, Ok(200));
    assert_eq!(get(&node.url, "/health/live").await.status, 200);
}

/// The first bytes a node sends to a peer address it was given, read by a bare TCP
/// listener standing in for the peer.
async fn first_bytes_sent_to_a_peer(node: &NodeProcess, scheme: &str) -> Vec<u8> {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = json!({
        "node_id": 2, "url": "http://127.0.0.1:9", "peer_url": format!("{scheme}://{addr}"),
        "region": "r2",
    });
    let reply = send(
        support::client()
            .post(format!("{}/v1/admin/cluster/learners", node.url))
            .bearer_auth(ADMIN_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let read = async {
        use tokio::io::AsyncReadExt;
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut first = [0_u8; 16];
        stream.read_exact(&mut first).await.expect("first bytes");
        first.to_vec()
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the leader connects to its new learner and sends its first bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_is_encrypted_on_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = support::cluster::issue_certificates(dir.path());
    let files = pki.node(1).expect("node 1");
    let env = peer_env(&Issued {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    let node = NodeProcess::start(&dir.path().join("tls-node"), &borrowed(&env));
    let first = first_bytes_sent_to_a_peer(&node, "https").await;
    // A TLS record of type handshake (a ClientHello), version 3.x — not HTTP.
    assert_eq!(&first[..2], &[0x16, 0x03], "{first:?}");
    assert!(
        !first.windows(4).any(|w| w == b"POST" || w == b"PRI "),
        "{first:?}"
    );

    // The same capture of a node configured for plaintext peers reads HTTP/2 in clear,
    // which is what the assertion above rules out.
    let plain = NodeProcess::start(&dir.path().join("plain-node"), &[]);
    let first = first_bytes_sent_to_a_peer(&plain, "http").await;
    assert_eq!(&first[..14], b"PRI * HTTP/2.0", "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_speaks_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client_cert = valid(dir.path(), "api");
    let env = [
        ("TANDEM_TLS__CLIENT_CERT_FILE", text(&client_cert.cert)),
        ("TANDEM_TLS__CLIENT_KEY_FILE", text(&client_cert.key)),
    ];
    let node = NodeProcess::start_with(&dir.path().join("node"), &borrowed(&env), true, false);
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let https = tls_client(&client_cert.ca, None);
    let wait_ready = async {
        loop {
            if let Ok(r) = https.get(format!("{}/health/ready", node.url)).send().await
                && r.status() == 200
            {
                return r.version();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let version = tokio::time::timeout(Duration::from_secs(30), wait_ready)
        .await
        .expect("ready over HTTPS");
    assert_eq!(version, reqwest::Version::HTTP_2, "h2 by ALPN");
    let http1 = tls_client_alpn(&client_cert.ca, None, &[b"http/1.1"])
        .get(format!("{}/health/live", node.url))
        .send()
        .await
        .expect("HTTP/1.1 over TLS");
    assert_eq!(
        (http1.status().as_u16(), http1.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // Plain HTTP to the HTTPS port fails, and the node carries on.
    let plain = format!("http://{}/health/live", without_scheme(&node.url));
    assert_eq!(support::http_status(&plain), None);
    let plain_reply = support::client().get(&plain).send().await;
    assert!(plain_reply.is_err(), "{plain_reply:?}");
    // A client that does not trust the CA refuses the node.
    let stranger = valid(dir.path(), "stranger");
    let untrusting = tls_client(&stranger.ca, None);
    assert!(
        untrusting
            .get(format!("{}/health/live", node.url))
            .send()
            .await
            .is_err()
    );

    // Writes and the `tandem load` tool over HTTPS, with --ca-file.
    let event = json!({"userId": "https-user", "event": "Signed Up", "messageId": "https-1"});
    let reply = https
        .post(format!("{}/v1/track", node.url))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&event)
        .send()
        .await
        .expect("send");
    assert_eq!(reply.status(), 200);
    let output = std::process::Command::new(support::binary())
        .args(["load", "--target", &node.url, "--write-key", WRITE_KEY])
        .args(["--events", "200", "--quiet", "--ca-file"])
        .arg(&client_cert.ca)
        .output()
        .expect("run tandem load");
    assert!(
        output.status.success(),
        "tandem load over HTTPS: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // `tandem cluster` over HTTPS with --ca-file; without it the node is not trusted.
    let status = |ca: Option<&Path>| {
        let mut command = std::process::Command::new(support::binary());
        command.args([
            "cluster",
            "status",
            "--target",
            &node.url,
            "--admin-key",
            ADMIN_KEY,
        ]);
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(ca);
        }
        command.output().expect("run tandem cluster")
    };
    let trusted = status(Some(&client_cert.ca));
    assert!(
        trusted.status.success() && String::from_utf8_lossy(&trusted.stdout).contains("leader: 1"),
        "{}{}",
        String::from_utf8_lossy(&trusted.stdout),
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(
        !status(None).status.success(),
        "an untrusted node must not be used"
    );

    // The gateway in front of an HTTPS node, trusting its CA.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gateway_url = format!("http://{}", listener.local_addr().expect("addr"));
    let mut options = tandem::gateway::GatewayOptions::new(vec![node.url.clone()]);
    options.ca_file = Some(client_cert.ca.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(tandem::gateway::serve(listener, options, async move {
        let _ = stopped.await;
    }));
    let through = get(&gateway_url, "/v1/profiles/user_id:https-user").await;
    assert_eq!(through.status, 200, "{}", through.body);
    let _ = stop.send(());
    gateway.await.expect("gateway task").expect("gateway");

    let metrics = https
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let (_, not_after) =
        tandem::tls::der::validity(&tandem::tls::load_certs(&client_cert.cert).expect("certs")[0])
            .expect("dates");
    let line = format!(
        "tandem_tls_certificate_expiry_timestamp_seconds{{listener=\"client\"}} {not_after}"
    );
    assert!(metrics.contains(&line), "{line} in:\n{metrics}");
}

/// Runs a node with `env` expecting it to refuse to start; its stderr.
fn refused(dir: &Path, env: &[(&str, &str)]) -> String {
    let (code, stderr) =
        support::run_node_expecting_exit(dir, &dir.join("data"), env, Duration::from_secs(30));
    assert!(
        code.is_some_and(|c| c != 0),
        "the node must refuse to start (exit {code:?}); stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expired = issue(
        dir.path(),
        "expired",
        now_secs() - 10 * DAY,
        now_secs() - DAY,
    );
    let early = issue(dir.path(), "early", now_secs() + DAY, now_secs() + 10 * DAY);
    for issued in [&expired, &early] {
        let peer = peer_env(issued);
        let stderr = refused(dir.path(), &borrowed(&peer));
        assert!(stderr.contains("certificate is not valid now"), "{stderr}");
        assert!(
            stderr.contains(&text(&issued.cert)),
            "names the file: {stderr}"
        );
        let client = [
            ("TANDEM_TLS__CLIENT_CERT_FILE", text(&issued.cert)),
            ("TANDEM_TLS__CLIENT_KEY_FILE", text(&issued.key)),
        ];
        let stderr = refused(dir.path(), &borrowed(&client));
        assert!(stderr.contains("certificate is not valid now"), "{stderr}");
    }
}

#[test]
fn key_files_others_can_read_are_refused_and_tls_is_required_between_nodes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = valid(dir.path(), "node");
    let env = peer_env(&issued);
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        let stderr = refused(dir.path(), &borrowed(&env));
        assert!(stderr.contains("chmod 600"), "mode {mode:o}: {stderr}");
    }
    // Without peer certificates and without an explicit plaintext setting, no start.
    let stderr = refused(dir.path(), &[("TANDEM_TLS__PEER_PLAINTEXT", "false")]);
    assert!(stderr.contains("peer traffic needs mutual TLS"), "{stderr}");
    // Owner-only, it starts.
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let node = NodeProcess::start(&dir.path().join("ok"), &borrowed(&env));
    assert!(node.peer_url.starts_with("https://"));
}

/// Whether the node closes `stream` (EOF or reset) within `within`, reading whatever it
/// sends meanwhile.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    let end = std::time::Instant::now() + within;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut scratch = [0_u8; 1024];
    while std::time::Instant::now() < end {
        match stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The header (and handshake) timeout of [`the_peer_listener_keeps_the_connection_limits`].
const HEADER_TIMEOUT_MS: u64 = 4_000;

/// Whether the node has closed `stream` (EOF or an error), without waiting.
fn is_closed(stream: &std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_nonblocking(true).expect("nonblocking");
    let mut scratch = [0_u8; 64];
    let closed = match (&*stream).read(&mut scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_keeps_the_connection_limits() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = support::cluster::issue_certificates(dir.path());
    let files = pki.node(1).expect("node 1");
    let mut env = peer_env(&Issued {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    // Far apart, so a loaded machine cannot blur "closed at once" into "timed out".
    env.push((
        "TANDEM_HTTP__HEADER_TIMEOUT_MS",
        HEADER_TIMEOUT_MS.to_string(),
    ));
    env.push(("TANDEM_HTTP__CONNECTIONS_MAX", "4".to_owned()));
    let node = NodeProcess::start(&dir.path().join("node"), &borrowed(&env));
    let peer_addr = without_scheme(&node.peer_url).to_owned();

    // A connection that never starts, or stops halfway through, its TLS handshake is
    // closed by the header timeout.
    let mut silent = std::net::TcpStream::connect(&peer_addr).expect("connect");
    let mut partial = std::net::TcpStream::connect(&peer_addr).expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("half a hello");
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(15)),
        "silent connection kept"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(15)),
        "partial hello kept"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS - 200),
        "{:?}",
        started.elapsed()
    );

    // Over the cap: of five connections at once, at least one is closed at once and never
    // more than four stay open (without a cap all five would wait for the timeout). "At
    // least one", not "exactly one": a permit of the connections above may still be on
    // its way back when these arrive.
    let held: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(&peer_addr).expect("connect"))
        .collect();
    let node2 = pki.node(2).expect("node 2");
    let member = tls_client(&files.ca, Some((&node2.cert, &node2.key)));
    let deadline = std::time::Instant::now() + Duration::from_millis(HEADER_TIMEOUT_MS / 2);
    let open = loop {
        let open = held.iter().filter(|s| !is_closed(s)).count();
        if open < held.len() || std::time::Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (1..=4).contains(&open),
        "{open} of 5 connections open over a cap of 4"
    );
    drop(held);
    // Once they are gone (or timed out), a member gets through again; the client
    // listener was never affected.
    assert_eq!(get(&node.url, "/health/live").await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if read_index(&member, &node, &node.peer_url).await == Ok(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "peer listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
