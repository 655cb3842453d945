//! Prometheus' HTTP query API (`/api/v1/…`) on the aggregator's HTTP port,
//! with Prometheus' JSON shapes, error types and status codes, so that
//! Grafana's Prometheus data source, `promtool query` and other clients of
//! that API read the store directly.
//!
//! Served: `query` and `query_range` (GET and POST), `series`, `labels`,
//! `label/<name>/values`, `metadata`, `rules`, `alerts` and
//! `status/buildinfo`. Queries are evaluated on blocking threads, each
//! selector holding the store's read lock only while it copies its samples,
//! so ingest never waits for a whole query. A query running past its time
//! limit is answered with 503 `timeout`; a range query asking for more than
//! 11,000 points per series, or an instant or range query reading more than
//! the sample limit, with 400/422 as Prometheus does. Refusals are counted
//! in `nodewatch_aggregator_api_queries_refused_total{reason}`.

// Handlers use Prometheus' short names (`p` params, `q` query, `t` time).
#![allow(clippy::many_single_char_names)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nodewatch_proto::gocompat::{format_float, parse_duration, parse_rfc3339, rfc3339_ms_fixed};
use serde_json::{json, Value as Json};

use crate::promql::{self, Engine, Expr, Labels, Storage, Value};
use crate::rules::RuleManager;
use crate::store::{now_ms, Store};

/// Most points per series a range query may return (Prometheus' limit).
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Limits applied to every query.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Longest a query may run before it is answered with `timeout`.
    pub timeout: Duration,
    /// Most samples one query may read from the store.
    pub max_samples: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
        }
    }
}

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub rules: Option<Arc<RuleManager>>,
    pub limits: ApiLimits,
    /// Subquery step when none is written: the evaluation interval.
    pub subquery_step_ms: i64,
    /// The bearer token clients must present, if any.
    pub bearer_token: Option<Arc<str>>,
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in
/// constant time (the time taken tells nothing of how much matched).
#[must_use]
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Refuses requests without the configured bearer token.
async fn require_token(
    State(st): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &st.bearer_token {
        let same = bearer_matches(req.headers(), token);
        if !same {
            refused("unauthorized");
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// A Prometheus API error: its HTTP status, `errorType` and text.
#[derive(Debug)]
struct ApiError(StatusCode, &'static str, String);

fn bad_data(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_data", msg.into())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.1, "error": self.2});
        (
            self.0,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn success(data: Json) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("status".into(), Json::String("success".into()));
    body.insert("data".into(), data);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Json::Object(body).to_string(),
    )
        .into_response()
}

fn refused(reason: &'static str) {
    metrics::counter!("nodewatch_aggregator_api_queries_refused_total", "reason" => reason)
        .increment(1);
}

/// Decodes `application/x-www-form-urlencoded` text.
fn form_pairs(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The request's parameters: the URL's, then a form body's (as Go's
/// `ParseForm` merges them).
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut p = form_pairs(query.unwrap_or(""));
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            p.extend(form_pairs(&String::from_utf8_lossy(body)));
        }
        Self(p)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The parameters of a GET or a form POST, extracted as the handler's
/// argument: the URL's query, the headers, then the body.
impl<S: Send + Sync> axum::extract::FromRequest<S> for Params {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let query = req.uri().query().map(str::to_string);
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self::new(query.as_deref(), &headers, &body))
    }
}

/// Prometheus' `parseTime`: Unix seconds with a fraction, or RFC 3339.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            // Milliseconds, rounded as Prometheus does.
            return Ok((f * 1000.0).round() as i64);
        }
    }
    parse_rfc3339(s).ok_or_else(|| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Runs the request parsers on arbitrary text (for the fuzz targets).
#[doc(hidden)]
pub fn parse_request_text(text: &str) {
    let _ = form_pairs(text);
    let _ = parse_time(text);
    let _ = parse_step(text);
}

/// Prometheus' `parseDuration`: seconds with a fraction, or `5m`, `1h30m`.
fn parse_step(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms > i64::MAX as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.round() as i64);
    }
    parse_duration(s).map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

fn fmt_time(t_ms: i64) -> Json {
    serde_json::Number::from_f64(t_ms as f64 / 1000.0).map_or(Json::Null, Json::Number)
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
            .collect(),
    )
}

/// A store that counts what it hands out and refuses past the limit.
struct Counting<'a> {
    store: &'a Store,
    max: usize,
    read: std::sync::atomic::AtomicUsize,
}

impl Counting<'_> {
    fn over(&self, n: usize) -> bool {
        self.read
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(n)
            > self.max
    }
}

impl Storage for Counting<'_> {
    fn select(
        &self,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
    ) -> Vec<promql::SeriesData> {
        let out = self.store.select(m, start, end);
        if self.over(out.iter().map(|s| s.samples.len()).sum()) {
            return Vec::new();
        }
        out
    }

    fn select_latest(
        &self,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
    ) -> Vec<(Labels, i64, f64)> {
        let out = self.store.select_latest(m, start, end);
        if self.over(out.len()) {
            return Vec::new();
        }
        out
    }
}

enum Answer {
    Instant(Value, i64),
    Range(Vec<promql::RangeSeries>),
}

const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// Evaluates on a blocking thread within the time limit.
async fn run(
    st: &ApiState,
    expr: Expr,
    range: Option<(i64, i64, i64)>,
    t: i64,
) -> Result<Answer, ApiError> {
    let store = Arc::clone(&st.store);
    let limits = st.limits;
    // The evaluation gives up at the deadline itself, so a timed-out query
    // stops using its thread too.
    let engine = Engine::new(promql::EngineOptions {
        subquery_step_ms: st.subquery_step_ms,
        deadline: std::time::Instant::now().checked_add(limits.timeout),
        ..promql::EngineOptions::default()
    });
    let task = tokio::task::spawn_blocking(move || {
        let counting = Counting {
            store: &store,
            max: limits.max_samples,
            read: std::sync::atomic::AtomicUsize::new(0),
        };
        let res = match range {
            Some((s, e, step)) => engine
                .eval_range(&counting, &expr, s, e, step)
                .map(Answer::Range),
            None => engine
                .eval(&counting, &expr, t)
                .map(|v| Answer::Instant(v, t)),
        };
        (res, counting.read.into_inner() > limits.max_samples)
    });
    match tokio::time::timeout(limits.timeout, task).await {
        Err(_) | Ok(Ok((Err(promql::EvalError::Timeout), _))) => {
            refused("timeout");
            Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "query timed out in expression evaluation".into(),
            ))
        }
        Ok(Err(e)) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
        Ok(Ok((_, true))) => {
            refused("samples");
            Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "execution",
                TOO_MANY_SAMPLES.into(),
            ))
        }
        Ok(Ok((Err(e), false))) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            e.to_string(),
        )),
        Ok(Ok((Ok(a), false))) => Ok(a),
    }
}

fn parse_query(p: &Params) -> Result<Expr, ApiError> {
    let q = p.get("query").unwrap_or("");
    let expr = promql::parse(q).map_err(|e| {
        refused("bad_query");
        bad_data(format!("invalid parameter \"query\": {e}"))
    })?;
    promql::check_supported(&expr).map_err(|e| {
        refused("bad_query");
        bad_data(format!("invalid parameter \"query\": {e}"))
    })?;
    Ok(expr)
}

async fn query(State(st): State<ApiState>, p: Params) -> Result<Response, ApiError> {
    let t = match p.get("time") {
        Some(s) => {
            parse_time(s).map_err(|e| bad_data(format!("invalid parameter \"time\": {e}")))?
        }
        None => now_ms(),
    };
    let expr = parse_query(&p)?;
    let Answer::Instant(v, t) = run(&st, expr, None, t).await? else {
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected range answer".into(),
        ));
    };
    Ok(success(match v {
        Value::Vector(v) => json!({
            "resultType": "vector",
            "result": v.iter().map(|s| json!({
                "metric": labels_json(&s.labels),
                "value": [fmt_time(t), format_float(s.v)],
            })).collect::<Vec<_>>(),
        }),
        Value::Scalar(v) => {
            json!({"resultType": "scalar", "result": [fmt_time(t), format_float(v)]})
        }
        Value::String(s) => json!({"resultType": "string", "result": [fmt_time(t), s]}),
        Value::Matrix(m) => json!({
            "resultType": "matrix",
            "result": m.iter().map(|s| json!({
                "metric": labels_json(&s.labels),
                "values": s.points.iter().map(|&(t, v)| json!([fmt_time(t), format_float(v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }))
}

async fn query_range(State(st): State<ApiState>, p: Params) -> Result<Response, ApiError> {
    let param = |name: &str| {
        p.get(name).ok_or_else(|| {
            bad_data(format!(
                "invalid parameter \"{name}\": cannot parse \"\" to a valid timestamp"
            ))
        })
    };
    let start = parse_time(param("start")?)
        .map_err(|e| bad_data(format!("invalid parameter \"start\": {e}")))?;
    let end = parse_time(param("end")?)
        .map_err(|e| bad_data(format!("invalid parameter \"end\": {e}")))?;
    if end < start {
        return Err(bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    let step = parse_step(p.get("step").unwrap_or(""))
        .map_err(|e| bad_data(format!("invalid parameter \"step\": {e}")))?;
    if step <= 0 {
        return Err(bad_data("invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer"));
    }
    if (end - start) / step > MAX_POINTS_PER_SERIES {
        refused("resolution");
        return Err(bad_data("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"));
    }
    let expr = parse_query(&p)?;
    let Answer::Range(series) = run(&st, expr, Some((start, end, step)), end).await? else {
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected instant answer".into(),
        ));
    };
    Ok(success(json!({
        "resultType": "matrix",
        "result": series.iter().map(|s| json!({
            "metric": labels_json(&s.labels),
            "values": s.points.iter().map(|&(t, v)| json!([fmt_time(t), format_float(v)])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })))
}

/// The `match[]` selectors and `[start, end]` of a metadata request.
fn selection(p: &Params, required: bool) -> Result<(Vec<Expr>, i64, i64), ApiError> {
    let matches = p.all("match[]");
    if matches.is_empty() && required {
        return Err(bad_data("no match[] parameter provided"));
    }
    let mut out = Vec::new();
    for m in matches {
        let e = promql::parse(m)
            .map_err(|e| bad_data(format!("invalid parameter \"match[]\": {e}")))?;
        if !matches!(e, Expr::VectorSelector(_)) {
            return Err(bad_data(format!(
                "invalid parameter \"match[]\": {m:?} is not a series selector"
            )));
        }
        out.push(e);
    }
    let start = match p.get("start") {
        Some(s) => {
            parse_time(s).map_err(|e| bad_data(format!("invalid parameter \"start\": {e}")))?
        }
        None => i64::MIN / 2,
    };
    let end = match p.get("end") {
        Some(s) => {
            parse_time(s).map_err(|e| bad_data(format!("invalid parameter \"end\": {e}")))?
        }
        None => i64::MAX / 2,
    };
    Ok((out, start, end))
}

/// Label sets of the series with samples in `[start, end]` matching any
/// selector (every series if there is none).
fn matching_series(store: &Store, sel: &[Expr], start: i64, end: i64) -> BTreeSet<Labels> {
    let mut out = BTreeSet::new();
    if sel.is_empty() {
        let inner = store.read();
        for s in inner.all() {
            if !s.range(start, end).is_empty() {
                out.insert(Labels::from_shared(Arc::clone(&s.labels)));
            }
        }
        return out;
    }
    for e in sel {
        if let Expr::VectorSelector(vs) = e {
            let mut m = vs.matchers.clone();
            if let Some(n) = &vs.name {
                m.matchers.push(promql_parser::label::Matcher::new(
                    promql_parser::label::MatchOp::Equal,
                    "__name__",
                    n,
                ));
            }
            for s in store.select(&m, start, end) {
                out.insert(s.labels);
            }
        }
    }
    out
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

async fn series(State(st): State<ApiState>, p: Params) -> Result<Response, ApiError> {
    let found = on_matching_series(&st, selection(&p, true)?, |found| {
        found.iter().map(labels_json).collect()
    })
    .await?;
    Ok(success(Json::Array(found)))
}

/// `f` of the series a selection matches, run where blocking is fine:
/// reading them takes the store's lock.
async fn on_matching_series<T: Send + 'static>(
    st: &ApiState,
    (sel, start, end): (Vec<Expr>, i64, i64),
    f: impl FnOnce(BTreeSet<Labels>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&st.store);
    tokio::task::spawn_blocking(move || f(matching_series(&store, &sel, start, end)))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

async fn labels(State(st): State<ApiState>, p: Params) -> Result<Response, ApiError> {
    let names = on_matching_series(&st, selection(&p, false)?, |found| {
        found
            .iter()
            .flat_map(|l| l.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>())
            .collect::<BTreeSet<String>>()
    })
    .await?;
    Ok(success(json!(names)))
}

async fn label_values(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if !is_label_name(&name) {
        return Err(bad_data(format!("invalid label name: {name:?}")));
    }
    let p = Params::new(q.as_deref(), &HeaderMap::new(), &[]);
    let values = on_matching_series(&st, selection(&p, false)?, move |found| {
        found
            .iter()
            .filter_map(|l| l.get(&name).map(str::to_string))
            .collect::<BTreeSet<String>>()
    })
    .await?;
    Ok(success(json!(values)))
}

async fn metadata(State(st): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let p = Params::new(q.as_deref(), &HeaderMap::new(), &[]);
    let only = p.get("metric").map(str::to_string);
    let mut out: BTreeMap<String, Json> = BTreeMap::new();
    {
        let inner = st.store.read();
        for s in inner.all() {
            let family = inner.family_of(s.name());
            if only.as_deref().is_some_and(|m| m != family) || out.contains_key(family) {
                continue;
            }
            if let Some(meta) = inner.family(family) {
                out.insert(
                    family.to_string(),
                    json!([{"type": meta.kind.as_str(), "help": meta.help, "unit": ""}]),
                );
            }
        }
    }
    success(json!(out))
}

fn alert_json(group: &str, a: &crate::rules::ActiveAlert) -> Json {
    let _ = group;
    json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "state": match a.state {
            crate::rules::AlertState::Firing => "firing",
            crate::rules::AlertState::Pending => "pending",
            crate::rules::AlertState::Inactive => "inactive",
        },
        "activeAt": rfc3339_ms_fixed(a.active_at_ms),
        "value": format_float(a.value),
    })
}

async fn alerts(State(st): State<ApiState>) -> Response {
    let alerts: Vec<Json> = st
        .rules
        .as_ref()
        .map(|r| r.alerts())
        .unwrap_or_default()
        .iter()
        .map(|(g, a)| alert_json(g, a))
        .collect();
    success(json!({ "alerts": alerts }))
}

async fn rules(State(st): State<ApiState>) -> Response {
    let groups: Vec<Json> = st
        .rules
        .as_ref()
        .map(|r| r.rule_groups())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, interval_ms, rules)| {
            json!({
                "name": name,
                "file": "",
                "interval": interval_ms as f64 / 1000.0,
                "rules": rules.iter().map(|(rule, is_alert, query)| if *is_alert {
                    json!({"name": rule, "query": query, "type": "alerting", "health": "ok", "alerts": []})
                } else {
                    json!({"name": rule, "query": query, "type": "recording", "health": "ok"})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    success(json!({ "groups": groups }))
}

async fn buildinfo() -> Response {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_parse_like_prometheus() {
        assert_eq!(parse_time("1700000000.5"), Ok(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.250+01:00"),
            Ok(1_700_000_000_250)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("99999999999999-01-01T00:00:00Z").is_err());
        assert!(parse_time("2023-01-01T00:00:00+99999999999999:00").is_err());
        for s in [
            "",
            "T",
            "-T-",
            "1-2-3T4:5:6+",
            "%",
            "%%%",
            "a=%f",
            "1e400",
            "NaN",
        ] {
            parse_request_text(s);
        }
        assert_eq!(parse_step("15"), Ok(15_000));
        assert_eq!(parse_step("0.5"), Ok(500));
        assert_eq!(parse_step("1m30s"), Ok(90_000));
        assert_eq!(
            rfc3339_ms_fixed(1_700_000_000_250),
            "2023-11-14T22:13:20.250Z"
        );
    }

    #[test]
    fn forms_decode() {
        assert_eq!(
            form_pairs("query=rate(x%5B5m%5D)+%3E+1&match%5B%5D=up&match[]=a"),
            vec![
                ("query".into(), "rate(x[5m]) > 1".into()),
                ("match[]".into(), "up".into()),
                ("match[]".into(), "a".into()),
            ]
        );
        assert_eq!(
            form_pairs("a=%zz&b=%4"),
            vec![("a".into(), "%zz".into()), ("b".into(), "%4".into())]
        );
    }

    #[test]
    fn values_print_as_go_does() {
        assert_eq!(format_float(1e21), "1000000000000000000000");
        assert_eq!(format_float(1e-7), "0.0000001");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(0.1 + 0.2), "0.30000000000000004");
    }
}
