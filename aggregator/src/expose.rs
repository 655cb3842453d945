//! `/metrics` (Prometheus text format) and `/healthz` over plain HTTP.
//!
//! Every node series carries `node="<name>"`; Prometheus scrapes with
//! `honor_labels: true` so that label is kept. The aggregator's own health
//! (`nodewatch_aggregator_*`) follows, from `metrics-exporter-prometheus`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use nodewatch_proto::text;

use crate::store::now_ms;
use crate::store::{Series, Store};

/// Renders the latest sample of every live series, grouped by family with
/// `# HELP` and `# TYPE`.
#[must_use]
pub fn render(store: &Store, now_ms: i64) -> String {
    let inner = store.read();
    let mut families: BTreeMap<&str, Vec<(&Series, f64)>> = BTreeMap::new();
    for s in inner.all() {
        if let Some((_, v)) = s.at(now_ms) {
            families
                .entry(inner.family_of(s.name()))
                .or_default()
                .push((s, v));
        }
    }
    let mut out = String::with_capacity(families.len() * 256);
    for (family, mut series) in families {
        if let Some(meta) = inner.family(family) {
            out.push_str("# HELP ");
            out.push_str(family);
            out.push(' ');
            out.push_str(&text::escape_help(&meta.help));
            out.push_str("\n# TYPE ");
            out.push_str(family);
            out.push(' ');
            out.push_str(meta.kind.as_str());
            out.push('\n');
        }
        // Stable output: by series name, then labels (histogram buckets stay together).
        series.sort_by(|a, b| {
            a.0.name()
                .cmp(b.0.name())
                .then_with(|| a.0.labels.cmp(&b.0.labels))
        });
        for (s, v) in series {
            text::write_sample(
                &mut out,
                s.name(),
                s.labels
                    .iter()
                    .filter(|(k, _)| k != "__name__")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
                v,
            );
        }
    }
    out
}

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    own: PrometheusHandle,
    /// The bearer token a scraper must send for `/metrics`, if any.
    bearer_token: Option<Arc<str>>,
}

/// Whether an `Accept-Encoding` header value accepts gzip: a `gzip` (or
/// `*`) coding whose quality is not 0, as RFC 9110 §12.5.3 reads it. An
/// explicit `gzip;q=0` refuses gzip even after a `*`.
#[must_use]
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut star = false;
    for part in accept_encoding.split(',') {
        let mut fields = part.split(';');
        let coding = fields.next().unwrap_or("").trim();
        let refused = fields.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if coding.eq_ignore_ascii_case("gzip") {
            return !refused;
        }
        if coding == "*" {
            star = !refused;
        }
    }
    star
}

/// gzip level for `/metrics`: the fastest. At 1,000 nodes an exposition is
/// over 100 MB; level 1 still shrinks it about tenfold (the text repeats its
/// label sets) while costing a fraction of the default level's CPU, as the
/// scraper waits on it.
const GZIP_LEVEL: u32 = 1;

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::new(GZIP_LEVEL),
    );
    enc.write_all(body)?;
    enc.finish()
}

async fn metrics(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = &st.bearer_token {
        if !crate::api::bearer_matches(&headers, token) {
            nodewatch_proto::tls::count_auth_failure("metrics_token");
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid bearer token is required for /metrics\n",
            )
                .into_response();
        }
    }
    let store = Arc::clone(&st.store);
    let own = st.own.clone();
    let want_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    // Rendering walks every series (and compressing reads it all again);
    // keep both off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut body = render(&store, now_ms());
        body.push_str(&own.render());
        if want_gzip {
            match gzip(body.as_bytes()) {
                Ok(z) => return (z, true),
                Err(error) => tracing::warn!(%error, "gzip of /metrics failed; sending it plain"),
            }
        }
        (body.into_bytes(), false)
    })
    .await
    .unwrap_or_default();
    let (bytes, gzipped) = body;
    let mut resp = (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::VARY, "Accept-Encoding"),
        ],
        bytes,
    )
        .into_response();
    if gzipped {
        resp.headers_mut().insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
    }
    resp
}

fn router(store: Arc<Store>, own: PrometheusHandle, bearer_token: Option<Arc<str>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .with_state(AppState {
            store,
            own,
            bearer_token,
        })
}

/// Serves `/metrics` (behind `metrics_token` when given) and `/healthz`,
/// and Prometheus' query API when `api` is given, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    own: PrometheusHandle,
    metrics_token: Option<Arc<str>>,
    api: Option<crate::api::ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = router(store, own, metrics_token);
    if let Some(api) = api {
        app = app.merge(crate::api::router(api));
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FamilyMeta, FamilyType};

    #[test]
    fn renders_families_with_node_label() {
        let store = Store::new(60_000);
        store.set_family(
            "lat",
            FamilyMeta {
                kind: FamilyType::Histogram,
                help: "Latency.".into(),
            },
        );
        store.set_family(
            "up_x",
            FamilyMeta {
                kind: FamilyType::Gauge,
                help: "Up.".into(),
            },
        );
        let mk = |pairs: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect();
            v.sort();
            store.series_id(v.into())
        };
        let a = mk(&[("__name__", "lat_bucket"), ("le", "+Inf"), ("node", "n1")]);
        let b = mk(&[("__name__", "lat_count"), ("node", "n1")]);
        let c = mk(&[("__name__", "up_x"), ("node", "n1")]);
        store.append(&[(a, 1000, 3.0), (b, 1000, 3.0), (c, 1000, 1.0)]);
        let text = render(&store, 2000);
        assert_eq!(
            text,
            "# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\",node=\"n1\"} 3\nlat_count{node=\"n1\"} 3\n# HELP up_x Up.\n# TYPE up_x gauge\nup_x{node=\"n1\"} 1\n"
        );
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip",
            "gzip;q=0.5",
            "br;q=1.0, gzip; q=0.8, *;q=0.1",
            "*",
            "identity, *;q=1",
        ] {
            assert!(accepts_gzip(yes), "{yes:?} accepts gzip");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; q=0.0",
            "*;q=0",
            "*, gzip;q=0",
            "x-gzip-not",
        ] {
            assert!(!accepts_gzip(no), "{no:?} does not accept gzip");
        }
    }

    /// Two scrapes of the same store, one asking for gzip: the compressed
    /// body says so and decodes to exactly the plain one.
    #[tokio::test]
    async fn metrics_gzip_when_asked_and_plain_otherwise() {
        use axum::body::Body;
        use http_body_util::BodyExt as _;
        use std::io::Read as _;
        use tower::ServiceExt as _;

        let store = Store::new(60_000);
        let labels: Vec<(String, String)> = vec![
            ("__name__".into(), "node_load1".into()),
            ("node".into(), "n1".into()),
        ];
        let id = store.series_id(labels.into());
        store.append(&[(id, now_ms(), 0.25)]);
        let own = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let app = router(store, own, None);
        let get = |enc: Option<&'static str>| {
            let mut req = axum::http::Request::get("/metrics");
            if let Some(e) = enc {
                req = req.header(header::ACCEPT_ENCODING, e);
            }
            app.clone().oneshot(req.body(Body::empty()).unwrap())
        };
        let plain = get(None).await.unwrap();
        assert_eq!(plain.headers().get(header::CONTENT_ENCODING), None);
        let plain = plain.into_body().collect().await.unwrap().to_bytes();
        let plain = String::from_utf8(plain.to_vec()).unwrap();
        assert!(plain.contains("node_load1{node=\"n1\"} 0.25"), "{plain}");

        let z = get(Some("gzip, deflate")).await.unwrap();
        assert_eq!(z.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(z.headers()[header::VARY], "Accept-Encoding");
        let z = z.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&z[..2], &[0x1f, 0x8b], "gzip magic");
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);

        let refused = get(Some("gzip;q=0, identity")).await.unwrap();
        assert_eq!(refused.headers().get(header::CONTENT_ENCODING), None);
    }
}
