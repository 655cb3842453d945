//! Prometheus' HTTP query API on a real aggregator, read by Prometheus 2.42's
//! own `promtool query instant|range|series|labels`: the answers must equal
//! those of `nodewatch query` (the gRPC path) for the same expressions and
//! times. Also the API's error shapes: bad query, unknown function, too
//! many points.
// Values are compared to the bit.
#![allow(clippy::float_cmp)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use nodewatch_tests::{cli_query, find_program, http_get, missing, wait_for, Aggregator, Pki};

/// Kind "a" never drops below 10, so a filter such as `* 2 > 10` always
/// keeps a series (an empty answer on both sides would compare nothing);
/// kind "b" passes it only part of the time.
const RULES: &str = r#"groups:
  - name: api
    interval: 1s
    rules:
      - record: nw_api:demo
        expr: label_replace(vector(time() % 97 + 10), "kind", "a", "", "")
      - record: nw_api:demo
        expr: label_replace(vector(time() % 13 * 2.5), "kind", "b", "", "")
"#;

/// (labels, value) pairs of a vector answer, in label order.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

fn samples(result: &serde_json::Value) -> Samples {
    let mut out: Samples = result
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (labels, s["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn promtool(args: &[&str]) -> String {
    let pt = find_program("promtool").unwrap();
    let out = Command::new(pt).arg("query").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool query {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_at(pki: &Pki, agg: &Aggregator, expr: &str, t_s: i64) -> Samples {
    let ops = pki.operator("cli");
    let out = nodewatch_tests::operator_cli(&ops, agg)
        .args(["query", "-o", "json", "--time", &t_s.to_string(), expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nodewatch query {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    samples(&v["result"])
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn promtool_reads_the_aggregator_like_nodewatch_query() {
    let _host = nodewatch_tests::host_shared();
    if find_program("promtool").is_none() {
        return missing("promtool (Debian package `prometheus`)");
    }
    let pki = Pki::new();
    let rules = pki.dir.path().join("api.rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!(
            "rule_files: ['{}']\nevaluation_interval: 1s\nquery_api:\n  max_samples: 100\n",
            rules.display()
        ),
    );
    let server = format!("http://{}", agg.http);
    wait_for(Duration::from_secs(30), "recorded series", || {
        (cli_query(&pki, &agg, "count(nw_api:demo)")["result"][0]["value"][1].as_str() == Some("2"))
            .then_some(())
    });
    // Let a few seconds of history accumulate, then query the past.
    std::thread::sleep(Duration::from_secs(10));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = now_s - 2;

    let exprs = [
        "nw_api:demo",
        "sum by (kind) (nw_api:demo)",
        "nw_api:demo * 2 > 10",
        "rate(nw_api:demo[4s])",
        "max_over_time(nw_api:demo[4s:1s])",
        "avg_over_time(sum(nw_api:demo)[3s:])",
        "holt_winters(nw_api:demo[5s], 0.5, 0.5)",
        "log10(nw_api:demo)",
        "nw_api:demo offset 2s",
        &format!("nw_api:demo @ {}", t - 3),
    ];
    let mut compared = 0;
    for expr in exprs {
        let theirs: serde_json::Value = serde_json::from_str(&promtool(&[
            "instant",
            "-o",
            "json",
            &format!("--time={t}"),
            &server,
            expr,
        ]))
        .unwrap();
        let ours = cli_at(&pki, &agg, expr, t);
        let theirs = samples(&theirs);
        assert!(!ours.is_empty(), "{expr}: empty answer");
        assert_eq!(ours.len(), theirs.len(), "{expr}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.0, b.0, "{expr}");
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{expr}: {} vs {}", a.1, b.1);
        }
        compared += 1;
    }

    // A range query: every step equals an instant query at that time.
    let range: serde_json::Value = serde_json::from_str(&promtool(&[
        "range",
        "-o",
        "json",
        &format!("--start={}", t - 4),
        &format!("--end={t}"),
        "--step=1s",
        &server,
        "rate(nw_api:demo[3s])",
    ]))
    .unwrap();
    let series = range.as_array().unwrap();
    assert_eq!(series.len(), 2, "{range}");
    for s in series {
        let values = s["values"].as_array().unwrap();
        assert_eq!(values.len(), 5, "{s}");
        for p in values {
            let ts = p[0].as_f64().unwrap() as i64;
            let v: f64 = p[1].as_str().unwrap().parse().unwrap();
            let kind = s["metric"]["kind"].as_str().unwrap();
            let at = cli_at(
                &pki,
                &agg,
                &format!("rate(nw_api:demo{{kind=\"{kind}\"}}[3s])"),
                ts,
            );
            assert_eq!(at.len(), 1);
            assert_eq!(at[0].1.to_bits(), v.to_bits(), "{kind} at {ts}");
        }
    }

    // `nodewatch query --range` answers as promtool's range query does.
    let ops = pki.operator("cli");
    let out = nodewatch_tests::cli_output(
        nodewatch_tests::operator_cli(&ops, &agg).args([
            "query",
            "-o",
            "json",
            "--time",
            &t.to_string(),
            "--range",
            "4s",
            "--step",
            "1s",
            "rate(nw_api:demo[3s])",
        ]),
        "nodewatch",
    );
    let ours: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let points = |v: &serde_json::Value| -> Vec<(String, Vec<(i64, u64)>)> {
        let mut out: Vec<(String, Vec<(i64, u64)>)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"].to_string(),
                    s["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            (
                                p[0].as_f64().unwrap() as i64,
                                p[1].as_str().unwrap().parse::<f64>().unwrap().to_bits(),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(points(&ours["result"]), points(&range));

    // An instant query for a range vector answers with a matrix.
    let m: serde_json::Value = serde_json::from_str(&promtool(&[
        "instant",
        "-o",
        "json",
        &format!("--time={t}"),
        &server,
        "nw_api:demo[3s]",
    ]))
    .unwrap();
    let m = m.as_array().unwrap();
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.iter().all(|s| s["values"].as_array().unwrap().len() >= 3),
        "{m:?}"
    );

    // Series and label values.
    let listed = promtool(&["series", "--match=nw_api:demo", &server]);
    assert!(
        listed.contains(r#"{__name__="nw_api:demo", kind="a"}"#)
            && listed.contains(r#"{__name__="nw_api:demo", kind="b"}"#),
        "{listed}"
    );
    let values = promtool(&["labels", &server, "kind"]);
    assert_eq!(
        values.lines().collect::<Vec<_>>(),
        vec!["a", "b"],
        "{values}"
    );

    // Errors as Prometheus reports them.
    let (status, body) = http_get(agg.http, "/api/v1/query?query=sum(").unwrap();
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "bad_data");
    let (status, body) = http_get(agg.http, "/api/v1/query?query=nofunc(up)").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nofunc"), "{body}");
    let (status, body) = http_get(
        agg.http,
        "/api/v1/query_range?query=up&start=0&end=100000&step=1",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"],
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    );
    // Past `query_api.max_samples` (100; the queries above read at most
    // 40): 422 as Prometheus' sample limit.
    let (status, body) = http_get(
        agg.http,
        "/api/v1/query?query=sum_over_time(sum_over_time(nw_api%3Ademo%5B1m%3A1s%5D)%5B1m%3A1s%5D)",
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("too many samples"), "{body}");
    assert!(agg
        .metrics()
        .contains(r#"nodewatch_aggregator_api_queries_refused_total{reason="samples"} 1"#));
    let (status, body) = http_get(agg.http, "/api/v1/labels").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], serde_json::json!(["__name__", "kind"]), "{body}");
    let (status, body) = http_get(
        agg.http,
        "/api/v1/series?match%5B%5D=nw_api%3Ademo%7Bkind%3D%22b%22%7D",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["data"],
        serde_json::json!([{"__name__": "nw_api:demo", "kind": "b"}])
    );
    let (status, body) = http_get(agg.http, "/api/v1/series").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no match[] parameter provided"), "{body}");
    let (status, body) = http_get(agg.http, "/api/v1/alerts").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""alerts":[]"#), "{body}");
    let (status, body) = http_get(agg.http, "/api/v1/metadata").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(agg.http, "/api/v1/status/buildinfo").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(agg.http, "/api/v1/rules").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("nw_api:demo"), "{body}");
    assert!(
        agg.metrics()
            .contains("nodewatch_aggregator_api_queries_refused_total"),
        "refusals are counted"
    );
    eprintln!("{compared} instant expressions and a 5-step range query agree between promtool and nodewatch query");
}

/// With `query_api.bearer_token_file` set, the API answers only clients
/// presenting the token (here promtool through its HTTP client config);
/// `/metrics` and `/healthz` stay open.
#[test]
fn the_query_api_can_require_a_bearer_token() {
    let _host = nodewatch_tests::host_shared();
    if find_program("promtool").is_none() {
        return missing("promtool (Debian package `prometheus`)");
    }
    let pki = Pki::new();
    let dir = pki.dir.path();
    let token = dir.join("api.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!(
            "query_api:\n  bearer_token_file: {}\n  timeout: 300ms\n",
            token.display()
        ),
    );
    let (status, body) = http_get(agg.http, "/api/v1/query?query=1").unwrap();
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errorType"], "unauthorized");
    assert_eq!(http_get(agg.http, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(agg.http, "/metrics").unwrap().0, 200);
    // promtool 2.42's `query` has no way to send a token: a plain HTTP
    // exchange with the header, as Grafana's data source sends it.
    let get_path = |path: &str, auth: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(agg.http).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        c.read_to_string(&mut buf).unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, buf)
    };
    let get_with = |auth: &str| get_path("/api/v1/query?query=1%2B2", auth);
    let (status, body) = get_with("Bearer s3cret-token");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""result":["#) && body.contains(r#""3""#),
        "{body}"
    );
    assert_eq!(get_with("Bearer s3cret-tokeX").0, 401);
    assert_eq!(get_with("Basic czNjcmV0LXRva2Vu").0, 401);

    // A query past `query_api.timeout` (300ms) is refused with 503 and
    // stops: the next one is answered at once.
    let started = std::time::Instant::now();
    let (status, body) = get_path(
        "/api/v1/query?query=count_over_time(sum_over_time(vector(1)%5B1d%3A1s%5D)%5B1d%3A1s%5D)",
        "Bearer s3cret-token",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""errorType":"timeout""#), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get_with("Bearer s3cret-token").0, 200);
    assert!(agg
        .metrics()
        .contains(r#"nodewatch_aggregator_api_queries_refused_total{reason="timeout"} 1"#));
}
