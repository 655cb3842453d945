//! The Alertmanager client against a small fake Alertmanager: what is
//! posted, when alerts are re-sent, retries while it fails, and the bounded
//! queue.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodewatch_aggregator::notifier::{AlertmanagerTarget, Notifier, NotifierConfig, PostableAlert};
use nodewatch_aggregator::promql::{Labels, MemStorage};
use nodewatch_aggregator::rules::{load_groups, send_alerts, GroupOptions};
use nodewatch_proto::gocompat::rfc3339_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A fake Alertmanager: answers each request with the next status of
/// `statuses` (then 200) and records `(path, body)`.
async fn fake_am(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(String, serde_json::Value)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            let (head_end, len) = loop {
                let n = sock.read(&mut tmp).await.unwrap();
                buf.extend_from_slice(&tmp[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    break (p + 4, len);
                }
            };
            while buf.len() < head_end + len {
                let n = sock.read(&mut tmp).await.unwrap();
                buf.extend_from_slice(&tmp[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let path = head.split_whitespace().nth(1).unwrap().to_string();
            let body: serde_json::Value =
                serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
            let status = statuses.next().unwrap_or(200);
            seen2.lock().unwrap().push((path, body));
            let resp =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            sock.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    (format!("http://{addr}/am"), seen)
}

fn alert(name: &str) -> PostableAlert {
    PostableAlert {
        labels: [("alertname".to_string(), name.to_string())].into(),
        annotations: std::collections::BTreeMap::new(),
        starts_at: rfc3339_ms(0),
        ends_at: rfc3339_ms(0),
        generator_url: String::new(),
    }
}

async fn wait_for(seen: &Arc<Mutex<Vec<(String, serde_json::Value)>>>, n: usize) {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("only {} requests arrived", seen.lock().unwrap().len());
}

#[test]
fn timestamps_are_rfc3339() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
}

#[tokio::test]
async fn firing_and_resolved_alerts_are_posted_like_prometheus() {
    let (url, seen) = fake_am(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.yml");
    std::fs::File::create(&p)
        .unwrap()
        .write_all(
            b"groups:\n  - name: g\n    interval: 10s\n    rules:\n      - alert: Down\n        expr: up == 0\n        labels: {severity: page, dc: own}\n        annotations: {summary: '{{ $labels.instance }} down'}\n",
        )
        .unwrap();
    let groups = load_groups(&[p], &GroupOptions::default()).unwrap();
    let g = &groups[0];
    let (notifier, task) = Notifier::new(NotifierConfig {
        targets: vec![AlertmanagerTarget::new(url.parse().unwrap())],
        external_labels: Labels::from_pairs([("dc", "eu1"), ("replica", "a")]),
        external_url: "http://agg:9090/".into(),
        resend_delay: nodewatch_aggregator::notifier::DEFAULT_RESEND_DELAY,
        ..NotifierConfig::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(task.run(async move {
        let _ = stopped.await;
    }));

    let mut s = MemStorage::new();
    let up = Labels::from_pairs([("__name__", "up"), ("instance", "a:9100")]);
    let eval = |s: &mut MemStorage, t_s: i64, v: f64| {
        s.append(&up, t_s * 1000, v);
        g.eval(s, t_s * 1000);
        send_alerts(&notifier, g, t_s * 1000);
    };
    eval(&mut s, 0, 0.0); // fires at once (no `for`): sent
    wait_for(&seen, 1).await;
    eval(&mut s, 10, 0.0); // within the resend delay: not sent
    eval(&mut s, 70, 0.0); // 70s after the last send: re-sent
    wait_for(&seen, 2).await;
    eval(&mut s, 80, 1.0); // resolved: sent at once
    wait_for(&seen, 3).await;
    eval(&mut s, 90, 1.0); // resolved, already sent: not yet again
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    runner.await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen.iter().all(|(path, _)| path == "/am/api/v2/alerts"));
    let first = &seen[0].1[0];
    assert_eq!(
        first["labels"],
        serde_json::json!({"alertname": "Down", "dc": "own", "instance": "a:9100", "replica": "a", "severity": "page"})
    );
    assert_eq!(
        first["annotations"],
        serde_json::json!({"summary": "a:9100 down"})
    );
    assert_eq!(first["startsAt"], "1970-01-01T00:00:00Z");
    // endsAt = now + 4 × max(10s interval, 60s resend delay).
    assert_eq!(first["endsAt"], "1970-01-01T00:04:00Z");
    assert_eq!(
        first["generatorURL"],
        "http://agg:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1"
    );
    assert_eq!(seen[1].1[0]["endsAt"], "1970-01-01T00:05:10Z");
    // Resolved: endsAt is the resolution time.
    assert_eq!(seen[2].1[0]["endsAt"], "1970-01-01T00:01:20Z");
    assert_eq!(notifier.stats().sent, 3);
}

#[tokio::test]
async fn failed_sends_are_retried_with_backoff() {
    let (url, seen) = fake_am(vec![503, 500]).await;
    let (notifier, task) = Notifier::new(NotifierConfig {
        targets: vec![AlertmanagerTarget::new(url.parse().unwrap())],
        retry_backoff: Duration::from_millis(10),
        ..NotifierConfig::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(task.run(async move {
        let _ = stopped.await;
    }));
    notifier.send([alert("A")]);
    wait_for(&seen, 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(notifier.stats().sent, 1);
    assert_eq!(notifier.stats().failed, 0);
    stop.send(()).unwrap();
    runner.await.unwrap();
}

#[tokio::test]
async fn unreachable_alertmanager_gives_up_after_retries() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let (notifier, task) = Notifier::new(NotifierConfig {
        targets: vec![AlertmanagerTarget::new(url.parse().unwrap())],
        retry_backoff: Duration::from_millis(5),
        max_retries: 2,
        ..NotifierConfig::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(task.run(async move {
        let _ = stopped.await;
    }));
    notifier.send([alert("A"), alert("B")]);
    for _ in 0..100 {
        if notifier.stats().failed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(notifier.stats().failed, 2);
    stop.send(()).unwrap();
    runner.await.unwrap();
}

#[test]
fn full_queue_drops_the_oldest() {
    let (notifier, _task) = Notifier::new(NotifierConfig {
        queue_capacity: 2,
        ..NotifierConfig::default()
    });
    notifier.send([alert("A"), alert("B"), alert("C")]);
    let st = notifier.stats();
    assert_eq!((st.queued, st.dropped), (2, 1));
}
