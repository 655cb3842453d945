use std::collections::BTreeMap;

use super::*;

fn data(v: f64) -> TemplateData<'static> {
    TemplateData {
        labels: BTreeMap::from([("instance".into(), "a:9100".into())]),
        external_labels: BTreeMap::from([("dc".into(), "eu1".into())]),
        external_url: "http://x/prom".into(),
        value: v,
        ..TemplateData::default()
    }
}

fn ex(s: &str, v: f64) -> String {
    Template::parse(s).unwrap().expand(&data(v)).unwrap()
}

#[test]
fn variables_and_fields() {
    assert_eq!(
        ex("{{ $labels.instance }} is {{ $value }}", 0.5),
        "a:9100 is 0.5"
    );
    assert_eq!(ex("{{ .Labels.instance }}/{{ .Value }}", 3.0), "a:9100/3");
    assert_eq!(
        ex("{{$externalLabels.dc}} {{ $externalURL }}", 1.0),
        "eu1 http://x/prom"
    );
    assert_eq!(ex("{{ $labels.missing }}x", 1.0), "x");
    assert_eq!(ex("{{ index $labels \"missing\" }}x", 1.0), "x");
    assert_eq!(
        ex("{{ if eq $labels.missing \"\" }}empty{{ end }}", 1.0),
        "empty"
    );
    assert_eq!(ex("a {{- $value -}} b", 1.0), "a1b");
    assert_eq!(ex("{{/* c */}}z", 1.0), "z");
    assert_eq!(ex("{{ $x := $labels.instance }}{{ $x }}", 1.0), "a:9100");
    assert_eq!(
        ex(
            "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
            1.0
        ),
        "instance=a:9100;"
    );
    assert_eq!(
        ex("{{ with $labels.instance }}[{{ . }}]{{ end }}", 1.0),
        "[a:9100]"
    );
    assert_eq!(
        ex(
            "{{ define \"x\" }}<{{ .instance }}>{{ end }}{{ template \"x\" $labels }}",
            1.0
        ),
        "<a:9100>"
    );
    assert_eq!(
        ex("{{ externalURL }} {{ pathPrefix }}", 1.0),
        "http://x/prom /prom"
    );
}

#[test]
fn go_number_printing() {
    assert_eq!(ex("{{ $value }}", 1e6), "1e+06");
    assert_eq!(ex("{{ $value }}", f64::INFINITY), "+Inf");
    assert_eq!(ex("{{ $value }}", f64::NEG_INFINITY), "-Inf");
    assert_eq!(ex("{{ $value }}", f64::NAN), "NaN");
    assert_eq!(ex("{{ $value }}", 0.1), "0.1");
    assert_eq!(ex("{{ 1e21 }} {{ 0.00001 }} {{ 3 }}", 1.0), "1e+21 1e-05 3");
    assert_eq!(ex("{{ print $value 2 \"s\" }}", 1e6), "1e+06 2s");
    assert_eq!(
        ex(
            "{{ printf \"%v|%5.1f|%g\" $value $value $value }}",
            f64::INFINITY
        ),
        "+Inf| +Inf|+Inf"
    );
    assert_eq!(
        ex("{{ printf \"%v %d\" $value $value }}", 1e6),
        "1e+06 %!d(float64=1e+06)"
    );
}

#[test]
fn humanize_family() {
    assert_eq!(ex("{{ humanize $value }}", 1234.0), "1.234k");
    assert_eq!(ex("{{ $value | humanize }}", 0.001), "1m");
    assert_eq!(ex("{{ humanize 0 }}", 1.0), "0");
    assert_eq!(ex("{{ humanize1024 $value }}", 1024.0), "1ki");
    assert_eq!(ex("{{ humanizePercentage $value }}", 0.256), "25.6%");
    assert_eq!(ex("{{ humanizeDuration $value }}", 90061.0), "1d 1h 1m 1s");
    assert_eq!(ex("{{ humanizeDuration $value }}", 0.25), "250ms");
    assert_eq!(ex("{{ humanizeDuration $value }}", 5.5), "5.5s");
    assert_eq!(ex("{{ humanize \"2048\" }}", 1.0), "2.048k");
    assert_eq!(
        ex("{{ humanizeTimestamp 1435065584.12 }}", 1.0),
        "2015-06-23 13:19:44.12 +0000 UTC"
    );
    assert_eq!(ex("{{ parseDuration \"1m30s\" }}", 1.0), "90");
    let e = Template::parse("{{ humanize \"x\" }}")
        .unwrap()
        .expand(&data(1.0));
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("error calling humanize: strconv.ParseFloat"));
}

#[test]
fn deep_nesting_is_an_error() {
    let deep = format!("{{{{ {}1{} }}}}", "(".repeat(1000), ")".repeat(1000));
    assert!(Template::parse(&deep).is_err());
    let deep = format!("{}x{}", "{{ if 1 }}".repeat(1000), "{{ end }}".repeat(1000));
    assert!(Template::parse(&deep).is_err());
    let ok = format!("{}x{}", "{{ if 1 }}".repeat(10), "{{ end }}".repeat(10));
    assert_eq!(
        Template::parse(&ok).unwrap().expand(&data(1.0)).unwrap(),
        "x"
    );
    // Unbounded loops stop.
    let t = Template::parse("{{ range 100000000 }}x{{ end }}").unwrap();
    assert!(t.expand(&data(1.0)).is_err());
}

#[test]
fn conditionals() {
    let t = "{{ if gt $value 0.9 }}critical{{ else if gt $value 0.5 }}warning{{ else }}ok{{ end }}";
    assert_eq!(ex(t, 0.95), "critical");
    assert_eq!(ex(t, 0.7), "warning");
    assert_eq!(ex(t, 0.1), "ok");
    assert_eq!(
        ex(
            "{{ if eq $labels.instance \"a:9100\" \"b\" }}yes{{ end }}",
            1.0
        ),
        "yes"
    );
    assert_eq!(ex("{{ if not $labels.missing }}none{{ end }}", 1.0), "none");
    assert_eq!(
        ex("{{ if and $value (lt $value 2.0) }}small{{ end }}", 1.0),
        "small"
    );
    assert_eq!(ex("{{ if $value }}t{{ else }}f{{ end }}", 0.0), "f");
    assert_eq!(
        ex(
            "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}",
            1.0
        ),
        "a"
    );
    assert_eq!(ex("{{ $labels.instance | stripPort }}", 1.0), "a");
    assert_eq!(
        ex("{{ \"node1.example.com:9100\" | stripDomain }}", 1.0),
        "node1:9100"
    );
    assert_eq!(
        ex("{{ \"10.0.0.1:9100\" | stripDomain }}", 1.0),
        "10.0.0.1:9100"
    );
    assert_eq!(
        ex("{{ humanizeTimestamp 1435065584.128 }}", 1.0),
        "2015-06-23 13:19:44.128 +0000 UTC"
    );
    assert_eq!(
        ex("{{ humanizeTimestamp 0 }}", 1.0),
        "1970-01-01 00:00:00 +0000 UTC"
    );
    assert_eq!(
        ex("{{ if match \"^a:\" $labels.instance }}m{{ end }}", 1.0),
        "m"
    );
    // Go compares a float64 with an int as an error.
    let e = Template::parse("{{ if gt $labels.instance 1.0 }}x{{ end }}")
        .unwrap()
        .expand(&data(1.0));
    assert!(e.is_err());
}

#[test]
fn printf_and_case() {
    assert_eq!(ex("{{ printf \"%.2f\" $value }}", 1.0 / 3.0), "0.33");
    assert_eq!(ex("{{ printf \"%s=%d\" \"a\" 3 }}", 1.0), "a=3");
    assert_eq!(
        ex(
            "{{ printf \"%.3f|%5d|%-4s|%q|%%\" 3.14159 42 \"ab\" \"x\" }}",
            1.0
        ),
        "3.142|   42|ab  |\"x\"|%"
    );
    assert_eq!(ex("{{ printf \"%[2]s %[1]s\" \"a\" \"b\" }}", 1.0), "b a");
    assert_eq!(ex("{{ printf \"%*d\" 4 7 }}", 1.0), "   7");
    assert_eq!(ex("{{ printf \"%d %d\" 1 }}", 1.0), "1 %!d(MISSING)");
    assert_eq!(ex("{{ printf \"%d\" 1 2 }}", 1.0), "1%!(EXTRA int=2)");
    assert_eq!(ex("{{ printf \"%\" }}", 1.0), "%!(NOVERB)");
    assert_eq!(ex("{{ $labels.instance | toUpper }}", 1.0), "A:9100");
    assert_eq!(ex("{{ toLower \"AB\" }}", 1.0), "ab");
    assert_eq!(ex("{{ title \"hello world\" }}", 1.0), "Hello World");
    assert_eq!(
        ex("{{ graphLink \"up == 0\" }} {{ tableLink \"a\" }}", 1.0),
        "/graph?g0.expr=up+%3D%3D+0&g0.tab=0 /graph?g0.expr=a&g0.tab=1"
    );
    assert_eq!(
        ex(
            "{{ with args 1 \"x\" }}{{ .arg0 }}{{ .arg1 }}{{ end }}",
            1.0
        ),
        "1x"
    );
}

fn sample(instance: &str, v: f64) -> QuerySample {
    QuerySample {
        labels: BTreeMap::from([
            ("__name__".into(), "up".into()),
            ("instance".into(), instance.into()),
        ]),
        value: v,
    }
}

#[test]
fn queries() {
    let calls = std::cell::Cell::new(0);
    let q = |q: &str| {
        calls.set(calls.get() + 1);
        match q {
            "up" => Ok(vec![sample("b", 2048.0), sample("a", 1.0)]),
            "none" => Ok(Vec::new()),
            other => Err(format!("bad query {other:?}")),
        }
    };
    let d = TemplateData {
        query: Some(&q),
        ..data(1.0)
    };
    let run = |s: &str| Template::parse(s).unwrap().expand(&d);
    assert_eq!(
        run("{{ with query \"up\" }}{{ . | first | value | humanize }}{{ end }}").unwrap(),
        "2.048k"
    );
    assert_eq!(
        run("{{ range query \"up\" | sortByLabel \"instance\" }}{{ .Labels.instance }}={{ .Value }} {{ end }}")
            .unwrap(),
        "a=1 b=2048 "
    );
    assert_eq!(
        run("{{ (query \"up\" | first).Labels.instance }} {{ query \"up\" | first | label \"instance\" }}").unwrap(),
        "b b"
    );
    assert_eq!(
        run("{{ with query \"none\" }}x{{ else }}empty{{ end }}").unwrap(),
        "empty"
    );
    // A query built from the alert's labels, nested in another.
    assert_eq!(
        run("{{ with printf \"up{instance=%q}\" $labels.instance | query }}{{ . | len }}{{ end }}{{ query \"up\" | len }}")
            .unwrap_err()
            .to_string(),
        "error executing template __alert: template: __alert: error calling query: bad query \"up{instance=\\\"a:9100\\\"}\""
    );
    let e = run("{{ query \"none\" | first }}").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("error calling first: first() called on vector with no elements"),
        "{e}"
    );
    // Without an engine, `query` fails rather than inventing data.
    let e = Template::parse("{{ query \"up\" }}")
        .unwrap()
        .expand(&data(1.0));
    assert!(e.is_err());
}

#[test]
fn load_errors_are_gos() {
    let e = Template::parse_for_alert("A", "{{ nofunc 1 }}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "template: __alert_A:1: function \"nofunc\" not defined"
    );
    let e = Template::parse_for_alert("A", "x\n{{ $foo }}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "template: __alert_A:2: undefined variable \"$foo\""
    );
    let e = Template::parse_for_alert("A", "{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "template: __alert_A:1: undefined variable \"$x\""
    );
    let e = Template::parse_for_alert("A", "{{ if $value }}\n{{ range $labels }}{{ end }}x")
        .unwrap_err();
    assert_eq!(e.to_string(), "template: __alert_A:2: unexpected EOF");
    let e =
        Template::parse_for_alert("A", "x{{ \"{{if}}\" }}{{/* {{if}} */}}{{- end }}").unwrap_err();
    assert_eq!(e.to_string(), "template: __alert_A:1: unexpected {{end}}");
    assert!(Template::parse("{{ else }}").is_err());
    assert!(Template::parse("{{ with 1 }}").is_err());
    assert!(Template::parse("{{ define \"a\" }}x").is_err());
    assert_eq!(
        ex("{{ if 1 }}{{ `}}{{end` }}{{ else }}{{ end }}{{-3}}", 1.0),
        "}}{{end-3"
    );
    assert!(Template::parse("{{ $value").is_err());
    assert!(Template::parse("{{ define \"a\" }}{{ $labels }}{{ end }}").is_err());
}
