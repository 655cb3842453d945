//! The deploy manifests as a cluster would take them: the kustomize base
//! rendered and checked against the Kubernetes 1.33 schema
//! (`kubernetes-validate`), the cert-manager, prometheus-operator and Flux
//! objects against their CRD models (`cloudcoil-models-*`), the rule pack
//! with the real `promtool`, the agent and aggregator configs with the
//! binaries' own config types, and the invariants the design demands of the
//! `DaemonSet`, the aggregators and the bootstrap trust chain.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nodewatch_tests::{find_program, missing};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The Kubernetes version the manifests target (Talos 1.10 ships 1.33).
const KUBERNETES_VERSION: &str = "1.33.0";

/// API groups whose kinds are custom resources, validated against CRD models.
const CRD_GROUPS: [&str; 4] = [
    "cert-manager.io/",
    "monitoring.coreos.com/",
    "kustomize.toolkit.fluxcd.io/",
    "source.toolkit.fluxcd.io/",
];

const INSTALL: &str = "pip install kubernetes-validate==1.37.0 cloudcoil==0.6.0 \
cloudcoil-models-cert-manager==1.17.1.0 cloudcoil-models-fluxcd==2.5.1.0 \
cloudcoil-models-prometheus-operator==0.80.1.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// One YAML document and the file it came from.
#[derive(Clone)]
struct Doc {
    file: PathBuf,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn is_custom(&self) -> bool {
        CRD_GROUPS.iter().any(|g| self.api_version().starts_with(g))
    }
}

fn load_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .map(|value| Doc {
            file: path.to_path_buf(),
            value,
        })
        .collect()
}

/// Renders the base as kustomize would: `resources:` in order. The base uses
/// no transformers or generators (each object names its namespace), and this
/// refuses any, so the rendering here is the one Flux applies.
fn render() -> Vec<Doc> {
    let dir = deploy("kubernetes");
    let k = &load_docs(&dir.join("kustomization.yaml"))[0].value;
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    assert_eq!(
        k["apiVersion"].as_str(),
        Some("kustomize.config.k8s.io/v1beta1")
    );
    let keys: BTreeSet<&str> = k
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    let allowed = BTreeSet::from(["apiVersion", "kind", "resources", "images"]);
    assert!(
        keys.is_subset(&allowed),
        "kustomization.yaml uses {keys:?}; this renderer knows only {allowed:?}"
    );
    let mut docs = Vec::new();
    let mut listed = BTreeSet::new();
    for r in k["resources"].as_sequence().expect("resources: a list") {
        let r = r.as_str().expect("resource: a file name");
        assert!(
            !r.contains('/') && !r.contains(':'),
            "{r}: only files of this folder are rendered"
        );
        let path = dir.join(r);
        assert!(path.is_file(), "{r} listed but missing");
        assert!(listed.insert(r.to_string()), "{r} listed twice");
        docs.extend(load_docs(&path));
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.extension().is_some_and(|e| e == "yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    set_images(&mut docs, seq(&k["images"]));
    docs
}

/// kustomize's `images:` transformer: every container whose image name
/// (without tag or digest) is an entry's `name` gets its `newName`,
/// `newTag` or `digest`. An entry that matches no container is refused
/// (kustomize would ignore it silently, and the pods would keep the old image).
fn set_images(docs: &mut [Doc], images: &[Value]) {
    for entry in images {
        let name = entry["name"].as_str().expect("images[].name");
        let mut used = false;
        for d in docs.iter_mut() {
            let Some(spec) = d
                .value
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            else {
                continue;
            };
            for list in ["initContainers", "containers"] {
                let Some(cs) = spec.get_mut(list).and_then(Value::as_sequence_mut) else {
                    continue;
                };
                for c in cs {
                    let image = c["image"].as_str().unwrap_or_default();
                    // `host:port/repo:tag@digest`: the tag's colon comes after the last slash.
                    let (base, _) = image.split_once('@').unwrap_or((image, ""));
                    let slash = base.rfind('/').map_or(0, |i| i + 1);
                    let (repo, tag) = match base[slash..].split_once(':') {
                        Some((_, t)) => (&base[..base.len() - t.len() - 1], Some(t)),
                        None => (base, None),
                    };
                    if repo != name {
                        continue;
                    }
                    used = true;
                    let repo = entry["newName"].as_str().unwrap_or(repo);
                    let new = match (entry["digest"].as_str(), entry["newTag"].as_str().or(tag)) {
                        (Some(digest), _) => format!("{repo}@{digest}"),
                        (None, Some(tag)) => format!("{repo}:{tag}"),
                        (None, None) => repo.to_string(),
                    };
                    c["image"] = Value::from(new);
                }
            }
        }
        assert!(
            used,
            "kustomization.yaml images: {name} names no container's image"
        );
    }
}

/// The image is named once, in kustomization.yaml's `images:`, at the
/// workspace's version (what deploy/container/build.sh tags and the release
/// workflow pushes); the workloads carry only the placeholder name that entry
/// replaces, so an overlay or Flux `spec.images` changes registry, tag or
/// digest in one place.
#[test]
fn image_is_named_once_at_the_workspace_version() {
    let _host = nodewatch_tests::host_shared();
    let dir = deploy("kubernetes");
    let k = &load_docs(&dir.join("kustomization.yaml"))[0].value;
    let images = seq(&k["images"]);
    assert_eq!(images.len(), 1, "one images: entry");
    let placeholder = images[0]["name"].as_str().unwrap();
    let new_name = images[0]["newName"].as_str().unwrap();
    let new_tag = images[0]["newTag"]
        .as_str()
        .expect("newTag: a string (quoted)");
    assert_eq!(new_name, "ghcr.io/nodewatch/nodewatch");
    assert_eq!(new_tag, env!("CARGO_PKG_VERSION"));
    let want = format!("{new_name}:{new_tag}");
    let mut workloads = 0;
    for d in render() {
        for c in seq(&d.value["spec"]["template"]["spec"]["containers"]) {
            workloads += 1;
            assert_eq!(
                c["image"].as_str(),
                Some(want.as_str()),
                "{}/{}",
                d.kind(),
                d.name()
            );
        }
    }
    assert_eq!(workloads, 2, "the agent and the aggregator");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "kustomization.yaml") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains(new_name),
                "{} names {new_name}; only kustomization.yaml should (image: {placeholder})",
                path.display()
            );
        }
    }
}

fn flux_docs() -> Vec<Doc> {
    let mut docs = load_docs(&deploy("flux/ks.yaml"));
    docs.extend(load_docs(&deploy("flux/gitrepository.yaml")));
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the base"))
        .value
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn strs(v: &Value) -> Vec<&str> {
    seq(v).iter().filter_map(Value::as_str).collect()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn base_renders_every_file_with_namespaced_objects() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let mut seen = BTreeSet::new();
    for d in &docs {
        assert!(
            !d.kind().is_empty(),
            "{}: document without kind",
            d.file.display()
        );
        assert!(
            seen.insert((d.kind().to_string(), d.name().to_string())),
            "{}/{} defined twice",
            d.kind(),
            d.name()
        );
        let cluster_scoped = matches!(d.kind(), "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        let ns = d.value["metadata"]["namespace"].as_str();
        if cluster_scoped {
            assert_eq!(ns, None, "{}/{} is cluster-scoped", d.kind(), d.name());
        } else {
            assert_eq!(
                ns,
                Some("nodewatch"),
                "{}/{} must name namespace nodewatch",
                d.kind(),
                d.name()
            );
        }
    }
    for kind in [
        "Namespace",
        "DaemonSet",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Issuer",
        "Certificate",
        "ClusterRole",
        "Role",
    ] {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no {kind} in the base"
        );
    }
    let ns = find(&docs, "Namespace", "nodewatch");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("privileged")
    );
}

#[test]
fn builtin_objects_validate_against_kubernetes_1_33() {
    let _host = nodewatch_tests::host_shared();
    // The console script, or the module where pip put no script on PATH.
    let validator = find_program("kubernetes-validate")
        .map(|p| (p, vec![]))
        .or_else(|| {
            let py = find_program("python3")?;
            run(Command::new(&py).args(["-c", "import kubernetes_validate"]))
                .0
                .then(|| (py, vec!["-m", "kubernetes_validate"]))
        });
    let Some((validator, prefix)) = validator else {
        return missing(&format!("kubernetes-validate ({INSTALL})"));
    };
    let docs = render();
    let builtin: Vec<&Doc> = docs.iter().filter(|d| !d.is_custom()).collect();
    assert!(builtin.len() > 10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    let mut text = String::new();
    for d in &builtin {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&d.value).unwrap());
    }
    std::fs::write(&file, text).unwrap();
    let (ok, out) = run(Command::new(validator)
        .args(prefix)
        .args(["-k", KUBERNETES_VERSION, "--strict"])
        .arg(&file));
    eprintln!("{out}");
    assert!(ok, "kubernetes-validate failed:\n{out}");
    // A kind without a schema is only a warning there; here it is an error.
    assert!(!out.contains("Couldn't find schema"), "{out}");
    let passed = out.matches(" passed for resource ").count();
    assert_eq!(passed, builtin.len(), "every object validated:\n{out}");
}

/// Validates custom resources against the CRDs' published schemas as
/// packaged in `cloudcoil-models-*`: required fields and types by the model,
/// unknown fields by comparing the input with what the model kept.
const CRD_CHECK: &str = r#"
import importlib, inspect, pkgutil, sys
import pydantic, yaml
import cloudcoil.models.cert_manager as cm
import cloudcoil.models.fluxcd as fx
import cloudcoil.models.prometheus_operator as po
from cloudcoil.resources import Resource

kinds = {}
for pkg in (cm, fx, po):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        mod = importlib.import_module(info.name)
        for _, c in inspect.getmembers(mod, inspect.isclass):
            if issubclass(c, Resource) and c.__module__ == mod.__name__:
                f = c.model_fields
                av, k = f.get("api_version"), f.get("kind")
                if av is not None and k is not None and isinstance(av.default, str) and isinstance(k.default, str):
                    kinds[(av.default, k.default)] = c

def dropped(src, out, path=""):
    if isinstance(src, dict) and isinstance(out, dict):
        for k, v in src.items():
            if k not in out:
                yield f"{path}.{k}".lstrip(".")
            else:
                yield from dropped(v, out[k], f"{path}.{k}")
    elif isinstance(src, list) and isinstance(out, list):
        for i, (a, b) in enumerate(zip(src, out)):
            yield from dropped(a, b, f"{path}[{i}]")

bad = 0
for doc in yaml.safe_load_all(open(sys.argv[1])):
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
    c = kinds.get(key)
    if c is None:
        bad += 1
        print(f"FAIL {name}: no schema for {key[0]}")
        continue
    try:
        obj = c.model_validate(doc)
    except pydantic.ValidationError as e:
        bad += 1
        print(f"FAIL {name}: {e}")
        continue
    unknown = list(dropped(doc, obj.model_dump(by_alias=True, exclude_unset=True, mode="json")))
    if unknown:
        bad += 1
        print(f"FAIL {name}: unknown field(s) {', '.join(unknown)}")
    else:
        print(f"ok {name}")
sys.exit(1 if bad else 0)
"#;

#[test]
fn custom_resources_validate_against_their_crds() {
    let _host = nodewatch_tests::host_shared();
    let mut docs: Vec<Doc> = render().into_iter().filter(Doc::is_custom).collect();
    docs.extend(flux_docs());
    // Required fields, checked here whatever is installed.
    for d in &docs {
        let s = &d.value["spec"];
        let what = format!("{}/{}", d.kind(), d.name());
        match d.kind() {
            "Certificate" => {
                assert!(s["secretName"].is_string(), "{what}: secretName");
                assert!(s["issuerRef"]["name"].is_string(), "{what}: issuerRef.name");
                assert!(
                    !s["dnsNames"].is_null() || !s["uris"].is_null() || !s["commonName"].is_null(),
                    "{what}: a name"
                );
            }
            "Issuer" => assert!(
                !s["selfSigned"].is_null() || s["ca"]["secretName"].is_string(),
                "{what}: selfSigned or ca.secretName"
            ),
            "ServiceMonitor" => {
                assert!(s["selector"].is_mapping(), "{what}: selector");
                assert!(!seq(&s["endpoints"]).is_empty(), "{what}: endpoints");
            }
            "PrometheusRule" => assert!(!seq(&s["groups"]).is_empty(), "{what}: groups"),
            "Kustomization" => {
                assert!(s["path"].is_string(), "{what}: path");
                assert!(s["interval"].is_string(), "{what}: interval");
                assert!(s["prune"].is_bool(), "{what}: prune");
                assert!(s["sourceRef"]["name"].is_string(), "{what}: sourceRef");
            }
            "GitRepository" => {
                assert!(s["url"].is_string(), "{what}: url");
                assert!(s["interval"].is_string(), "{what}: interval");
            }
            other => panic!("{what}: no check for custom kind {other}"),
        }
    }
    let python = find_program("python3");
    let usable = python.as_ref().is_some_and(|p| {
        run(Command::new(p).args([
            "-c",
            "import yaml, cloudcoil.models.cert_manager, cloudcoil.models.fluxcd, cloudcoil.models.prometheus_operator",
        ]))
        .0
    });
    let (Some(python), true) = (python, usable) else {
        return missing(&format!("python3 with cloudcoil CRD models ({INSTALL})"));
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.yaml");
    let script = dir.path().join("crd_check.py");
    let mut text = String::new();
    for d in &docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&d.value).unwrap());
    }
    std::fs::write(&file, text).unwrap();
    std::fs::write(&script, CRD_CHECK).unwrap();
    let (ok, out) = run(Command::new(python).arg(&script).arg(&file));
    eprintln!("{out}");
    assert!(ok, "custom resources do not match their CRDs:\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        docs.len()
    );
}

#[test]
fn rule_pack_passes_promtool_and_matches_the_prometheus_rule() {
    let _host = nodewatch_tests::host_shared();
    let rules_file = deploy("rules/nodewatch.rules.yml");
    let rules = &load_docs(&rules_file)[0].value;
    let docs = render();
    // The aggregators evaluate the pack from this ConfigMap...
    let cm = find(&docs, "ConfigMap", "nodewatch-rules");
    assert_eq!(
        cm["data"]["nodewatch.rules.yml"].as_str(),
        Some(std::fs::read_to_string(&rules_file).unwrap().as_str()),
        "kubernetes/aggregator-rules.yaml must carry rules/nodewatch.rules.yml verbatim"
    );
    // ...and the PrometheusRule (an alternative, not in the base) holds the same groups.
    let pr_docs = load_docs(&deploy("kubernetes/optional/prometheusrule.yaml"));
    let pr = &pr_docs[0].value;
    assert_eq!(
        &pr["spec"]["groups"], &rules["groups"],
        "kubernetes/optional/prometheusrule.yaml must carry rules/nodewatch.rules.yml's groups verbatim"
    );
    // The rules only Prometheus can evaluate: their own PrometheusRule, in the base.
    let aggregators_file = deploy("rules/nodewatch-aggregators.rules.yml");
    let aggregators = &load_docs(&aggregators_file)[0].value;
    let apr = find(&docs, "PrometheusRule", "nodewatch-aggregators");
    assert_eq!(
        &apr["spec"]["groups"], &aggregators["groups"],
        "kubernetes/prometheusrule-aggregators.yaml must carry rules/nodewatch-aggregators.rules.yml's groups verbatim"
    );
    let mut alerts = 0;
    for g in seq(&rules["groups"])
        .iter()
        .chain(seq(&aggregators["groups"]))
    {
        for r in seq(&g["rules"]) {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let sev = r["labels"]["severity"].as_str();
            // `none`: the Watchdog, which always fires.
            assert!(
                matches!(sev, Some("critical" | "warning" | "info"))
                    || (name == "Watchdog" && sev == Some("none")),
                "{name}: severity {sev:?}"
            );
            for a in ["summary", "description"] {
                assert!(r["annotations"][a].is_string(), "{name}: annotation {a}");
            }
        }
    }
    assert!(alerts >= 15, "{alerts} alerts");

    let Some(promtool) = find_program("promtool") else {
        return missing("promtool (Debian package `prometheus`)");
    };
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules_file)
        .arg(&aggregators_file));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool).current_dir(deploy("rules")).args([
        "test",
        "rules",
        "nodewatch.rules.test.yml",
    ]));
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_is_embedded_and_its_queries_parse() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let cm = find(&docs, "ConfigMap", "nodewatch-dashboard");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let embedded: serde_json::Value =
        serde_json::from_str(cm["data"]["nodewatch.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/nodewatch.json")).unwrap())
            .unwrap();
    assert_eq!(
        embedded, file,
        "the ConfigMap must embed grafana/nodewatch.json"
    );
    let exprs: Vec<String> = file["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    let all = exprs.join("\n");
    for metric in [
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
        "node_disk_read_bytes_total",
        "node_network_receive_bytes_total",
        "nodewatch_oom_kills_total",
        "nodewatch_tcp_retransmits_total",
        "nodewatch_pf_states",
        "nodewatch_gateway_loss_ratio",
        "nodewatch_zpool_health",
        "nodewatch_aggregator_nodes_connected",
        "nodewatch_node_cpu_requests_cores",
        "nodewatch_node_cpu_limits_cores",
        "nodewatch_node_cpu_allocatable_cores",
        "nodewatch_image_pull_failures",
    ] {
        assert!(all.contains(metric), "no panel shows {metric}");
    }
    let Some(promtool) = find_program("promtool") else {
        return missing("promtool (Debian package `prometheus`)");
    };
    // Each query as a recording rule, with Grafana's variables filled in, so
    // promtool's PromQL parser checks it.
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m").replace("$node", ".*");
        writeln!(
            text,
            "      - record: dashboard:expr_{i}\n        expr: {}",
            serde_json::to_string(&e).unwrap()
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, text).unwrap();
    let (ok, out) = run(Command::new(promtool).arg("check").arg("rules").arg(&file));
    assert!(ok, "dashboard queries:\n{out}");
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    seq(&pod_spec["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    seq(&pod_spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The volume mounted at `path` in container `c`, and the mount.
fn mount_of<'a>(pod_spec: &'a Value, c: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let m = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    (volume(pod_spec, m["name"].as_str().unwrap()), m)
}

/// Whether `file` lies under a volume mounted in container `c`.
fn mounted(c: &Value, file: &str) -> bool {
    seq(&c["volumeMounts"]).iter().any(|m| {
        let p = m["mountPath"].as_str().unwrap();
        file == p || file.starts_with(&format!("{}/", p.trim_end_matches('/')))
    })
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn agent_daemonset_meets_the_design() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let ds = find(&docs, "DaemonSet", "nodewatch-agent");
    let spec = &ds["spec"];
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID");
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let tolerations = seq(&pod["tolerations"]);
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists")
                && t["key"].is_null()
                && t["effect"].is_null()),
        "must tolerate every taint: {tolerations:?}"
    );
    assert_eq!(
        spec["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    let ru = &spec["updateStrategy"]["rollingUpdate"];
    assert_eq!(ru["maxUnavailable"].as_u64(), Some(1));
    assert_eq!(ru["maxSurge"].as_u64(), Some(0));
    if pod["hostNetwork"].as_bool() == Some(true) {
        assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    }

    let c = container(pod, "agent");
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true), "not privileged");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let add: BTreeSet<&str> = strs(&sc["capabilities"]["add"]).into_iter().collect();
    let need = BTreeSet::from(["BPF", "PERFMON", "SYS_RESOURCE", "SYSLOG"]);
    assert!(
        need.is_subset(&add),
        "capabilities {add:?} lack some of {need:?}"
    );
    let allowed_extra = BTreeSet::from(["DAC_READ_SEARCH"]);
    for cap in add.difference(&need) {
        assert!(
            allowed_extra.contains(cap),
            "capability {cap} is not in the design"
        );
    }
    assert!(
        !add.contains("SYS_ADMIN"),
        "SYS_ADMIN is what the design avoids"
    );

    let node_name = seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("NODE_NAME"))
        .expect("NODE_NAME env");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );

    for (path, host, read_only) in [
        ("/host/proc", "/proc", true),
        ("/host/sys", "/sys", true),
        ("/sys/fs/bpf", "/sys/fs/bpf", true),
        ("/sys/kernel/tracing", "/sys/kernel/tracing", true),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
        ("/host/root", "/", true),
        ("/var/lib/nodewatch", "/var/lib/nodewatch", false),
    ] {
        let (v, m) = mount_of(pod, c, path);
        assert_eq!(v["hostPath"]["path"].as_str(), Some(host), "{path}");
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{path} readOnly"
        );
    }
    let (_, root) = mount_of(pod, c, "/host/root");
    assert_eq!(root["mountPropagation"].as_str(), Some("HostToContainer"));
    let (spool, _) = mount_of(pod, c, "/var/lib/nodewatch");
    assert_eq!(
        spool["hostPath"]["type"].as_str(),
        Some("DirectoryOrCreate")
    );

    let res = &c["resources"];
    assert!(res["requests"]["cpu"].is_string() && res["requests"]["memory"].is_string());
    assert!(res["limits"]["memory"].is_string());
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert!(get["path"].is_string(), "{probe}");
        let port = &get["port"];
        let port_no = port.as_u64().or_else(|| {
            seq(&c["ports"])
                .iter()
                .find(|p| p["name"] == *port)
                .and_then(|p| p["containerPort"].as_u64())
        });
        assert_eq!(port_no, Some(9465), "{probe} port");
        // The agent listens on loopback: only a host-network pod can be
        // probed there, and then `host` must say so.
        if pod["hostNetwork"].as_bool() == Some(true) {
            assert_eq!(get["host"].as_str(), Some("127.0.0.1"), "{probe} host");
        } else {
            assert!(get["host"].is_null(), "{probe} host");
        }
    }
}

#[test]
fn aggregator_is_restricted_redundant_and_scraped() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let sts = find(&docs, "StatefulSet", "nodewatch-aggregator");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(2));
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );

    // Pod Security `restricted`.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_ne!(psc["runAsUser"].as_u64(), Some(0));
    for key in ["hostPID", "hostNetwork", "hostIPC"] {
        assert_ne!(pod[key].as_bool(), Some(true), "{key}");
    }
    for v in seq(&pod["volumes"]) {
        assert!(v["hostPath"].is_null(), "restricted forbids hostPath");
    }
    let c = container(pod, "aggregator");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );

    let anti =
        seq(&pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]);
    assert!(
        anti.iter()
            .any(|t| t["topologyKey"].as_str() == Some("kubernetes.io/hostname")),
        "replicas on different nodes"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "nodewatch-aggregator");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    // Services: gRPC 7443 and http-metrics 9464; the headless one governs
    // the StatefulSet so each replica has a stable name.
    let svc = find(&docs, "Service", "nodewatch-aggregator");
    let ports: Vec<(Option<&str>, Option<u64>)> = seq(&svc["spec"]["ports"])
        .iter()
        .map(|p| (p["name"].as_str(), p["port"].as_u64()))
        .collect();
    assert!(ports.contains(&(Some("grpc"), Some(7443))), "{ports:?}");
    assert!(
        ports.contains(&(Some("http-metrics"), Some(9464))),
        "{ports:?}"
    );
    let headless_name = spec["serviceName"].as_str().unwrap();
    let headless = find(&docs, "Service", headless_name);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));

    let sm = find(&docs, "ServiceMonitor", "nodewatch-aggregator");
    let endpoints = seq(&sm["spec"]["endpoints"]);
    assert!(!endpoints.is_empty());
    for e in endpoints {
        assert_eq!(
            e["honorLabels"].as_bool(),
            Some(true),
            "honorLabels keeps the node label"
        );
        assert_eq!(e["port"].as_str(), Some("http-metrics"));
    }
    // The ServiceMonitor selects the ClusterIP Service only (each replica
    // scraped once).
    let sel = sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    let matches = |s: &Value| {
        sel.iter()
            .all(|(k, v)| s["metadata"]["labels"][k.as_str().unwrap()] == *v)
    };
    assert!(matches(svc));
    assert!(!matches(headless));
    // The job label the rules and the dashboard select on is the one the
    // ServiceMonitor produces (`jobLabel` names a label of the Service).
    let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    let job = svc["metadata"]["labels"][job_label].as_str().unwrap();
    let rules = std::fs::read_to_string(deploy("rules/nodewatch-aggregators.rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy("grafana/nodewatch.json")).unwrap();
    assert!(
        rules.contains(&format!("job=\"{job}\"")),
        "rules select job {job}"
    );
    assert!(
        dashboard.contains(&format!("job=\\\"{job}\\\"")),
        "dashboard selects job {job}"
    );
}

#[derive(Deserialize)]
struct CertNames {
    #[serde(rename = "dnsNames", default)]
    dns_names: Vec<String>,
}

/// Whether a certificate name (possibly `*.`) covers `host`.
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn configs_parse_with_the_binaries_own_types_and_match_the_pods() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();

    // Agent.
    let text = find(&docs, "ConfigMap", "nodewatch-agent")["data"]["agent.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let agent: nodewatch_agent::config::File =
        nodewatch_proto::config::parse_yaml(&text, Path::new("agent.yaml"))
            .unwrap_or_else(|e| panic!("agent.yaml: {e}"));
    assert_eq!(agent.paths.procfs.as_deref(), Some(Path::new("/host/proc")));
    assert_eq!(agent.paths.sysfs.as_deref(), Some(Path::new("/host/sys")));
    assert_eq!(agent.paths.rootfs.as_deref(), Some(Path::new("/host/root")));
    let ds_pod = &find(&docs, "DaemonSet", "nodewatch-agent")["spec"]["template"]["spec"];
    let agent_c = container(ds_pod, "agent");
    let cmd = strs(&agent_c["command"]).join(" ");
    assert!(cmd.contains("/etc/nodewatch/agent.yaml"), "{cmd}");
    assert!(mounted(agent_c, "/etc/nodewatch/agent.yaml"));
    for f in [&agent.tls.ca, &agent.tls.cert, &agent.tls.key] {
        let f = f.as_ref().expect("tls file set").to_str().unwrap();
        assert!(mounted(agent_c, f), "agent {f} is not on a mounted volume");
    }
    // The spool lies on the hostPath, not in the container's file system.
    let spool = agent
        .spool
        .dir
        .as_ref()
        .map_or(nodewatch_agent::spool::DEFAULT_DIR, |d| d.to_str().unwrap());
    assert!(
        mounted(agent_c, spool),
        "spool {spool} is not on a mounted volume"
    );
    // The Kubernetes section validates once the DaemonSet's environment is
    // set, and every variable it names comes from the downward API.
    let kube = agent.kubernetes.as_ref().expect("kubernetes section");
    let env_from = |name: &str| {
        seq(&agent_c["env"])
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
            .map(str::to_string)
    };
    assert_eq!(env_from("NODE_IP").as_deref(), Some("status.hostIP"));
    let url = kube.kubelet_url.as_deref().expect("kubelet_url");
    assert!(
        url.contains("${NODE_IP}") && url.ends_with(":10250"),
        "{url}"
    );
    let env = |k: &str| match k {
        "NODE_IP" => Some("10.0.0.5".to_string()),
        "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
        _ => None,
    };
    let mut problems = nodewatch_proto::config::Problems::new(None);
    let k = kube.validate(&env, &mut problems);
    assert!(problems.is_empty(), "{problems}");
    assert_eq!(k.kubelet.unwrap().to_string(), "https://10.0.0.5:10250/");
    assert!(!k.kubelet_insecure_skip_verify);
    // The in-cluster token and CA the agent defaults to are mounted.
    assert_eq!(ds_pod["automountServiceAccountToken"].as_bool(), Some(true));
    let (spool_vol, _) = mount_of(ds_pod, agent_c, "/var/lib/nodewatch");
    assert!(spool_vol["hostPath"].is_mapping());
    // The probes reach the address the agent serves its health on.
    let health = agent
        .health_listen
        .as_deref()
        .unwrap_or(nodewatch_agent::config::DEFAULT_HEALTH_LISTEN);
    let health: std::net::SocketAddr = health.parse().unwrap();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent_c[probe]["httpGet"];
        let port = &get["port"];
        let port_no = port.as_u64().or_else(|| {
            seq(&agent_c["ports"])
                .iter()
                .find(|p| p["name"] == *port)
                .and_then(|p| p["containerPort"].as_u64())
        });
        assert_eq!(port_no, Some(u64::from(health.port())), "{probe} port");
        if health.ip().is_loopback() {
            // Only the host network namespace's loopback is the kubelet's.
            assert_eq!(
                ds_pod["hostNetwork"].as_bool(),
                Some(true),
                "{probe}: loopback needs hostNetwork"
            );
            assert_eq!(get["host"].as_str(), Some("127.0.0.1"), "{probe} host");
        }
    }

    // Every aggregator the agent dials is a replica of the StatefulSet, by
    // its stable name, and named in the server certificate.
    let sts = find(&docs, "StatefulSet", "nodewatch-aggregator");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap() as usize;
    let headless = sts["spec"]["serviceName"].as_str().unwrap();
    assert_eq!(agent.aggregators.len(), replicas, "one stream per replica");
    let cert: CertNames = serde_yaml_ng::from_value(
        find(&docs, "Certificate", "nodewatch-aggregator")["spec"].clone(),
    )
    .unwrap();
    for (i, a) in agent.aggregators.iter().enumerate() {
        let t = nodewatch_proto::tls::Target::parse(a).unwrap();
        assert_eq!(
            t.host,
            format!("nodewatch-aggregator-{i}.{headless}.nodewatch.svc"),
            "aggregators[{i}]"
        );
        assert_eq!(t.port, 7443);
        let name = agent.server_name.as_deref().unwrap_or(&t.host);
        assert!(
            cert.dns_names.iter().any(|p| covers(p, name)),
            "the server certificate does not name {name}"
        );
    }

    // Aggregator.
    let text = find(&docs, "ConfigMap", "nodewatch-aggregator")["data"]["aggregator.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let agg: nodewatch_aggregator::config::File =
        nodewatch_proto::config::parse_yaml(&text, Path::new("aggregator.yaml"))
            .unwrap_or_else(|e| panic!("aggregator.yaml: {e}"));
    let sts_pod = &sts["spec"]["template"]["spec"];
    let agg_c = container(sts_pod, "aggregator");
    for f in [&agg.tls.ca, &agg.tls.cert, &agg.tls.key] {
        let f = f.as_ref().expect("tls file set").to_str().unwrap();
        assert!(
            mounted(agg_c, f),
            "aggregator {f} is not on a mounted volume"
        );
    }
    let port_of = |name: &str| {
        seq(&agg_c["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert!(agg.listen.grpc.ends_with(&format!(":{}", port_of("grpc"))));
    assert!(agg
        .listen
        .http
        .ends_with(&format!(":{}", port_of("http-metrics"))));
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn bootstrap_trust_chain_is_wired() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let ds_pod = &find(&docs, "DaemonSet", "nodewatch-agent")["spec"]["template"]["spec"];
    assert_eq!(
        ds_pod["serviceAccountName"].as_str(),
        Some("nodewatch-agent")
    );

    // The projected, audience-bound, short-lived token.
    let token = seq(&ds_pod["volumes"])
        .iter()
        .flat_map(|v| seq(&v["projected"]["sources"]))
        .find_map(|s| s.get("serviceAccountToken"))
        .expect("a projected serviceAccountToken volume");
    assert_eq!(token["audience"].as_str(), Some("nodewatch"));
    let exp = token["expirationSeconds"].as_u64().unwrap();
    assert!((600..=3600).contains(&exp), "expirationSeconds {exp}");

    // No agent pod can read a key that matters: only the trust anchor's
    // ca.crt is mounted from a Secret.
    for v in seq(&ds_pod["volumes"]) {
        let secret = &v["secret"];
        if secret.is_null() {
            continue;
        }
        let name = secret["secretName"].as_str().unwrap();
        assert!(
            ![
                "nodewatch-ca",
                "nodewatch-node-ca",
                "nodewatch-aggregator-tls"
            ]
            .contains(&name),
            "agent mounts {name}"
        );
        let keys: Vec<&str> = seq(&secret["items"])
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        assert_eq!(keys, ["ca.crt"], "agent must mount only ca.crt of {name}");
    }

    // The trust is split: the root's key (Secret nodewatch-ca, which signs
    // operators) is mounted by nobody; the aggregators mount the node-issuing
    // CA the root signs, and Bootstrap signs with it.
    let ca = find(&docs, "Certificate", "nodewatch-ca");
    assert_eq!(ca["spec"]["isCA"].as_bool(), Some(true));
    let ca_secret = ca["spec"]["secretName"].as_str().unwrap();
    let ca_issuer = find(&docs, "Issuer", "nodewatch-ca");
    assert_eq!(
        ca_issuer["spec"]["ca"]["secretName"].as_str(),
        Some(ca_secret)
    );
    for d in &docs {
        let pod = match d.kind() {
            "StatefulSet" | "DaemonSet" | "Deployment" => &d.value["spec"]["template"]["spec"],
            _ => continue,
        };
        for v in seq(&pod["volumes"]) {
            assert_ne!(
                v["secret"]["secretName"].as_str(),
                Some(ca_secret),
                "{}/{} mounts the root CA key",
                d.kind(),
                d.name()
            );
        }
    }
    let node_ca = find(&docs, "Certificate", "nodewatch-node-ca");
    assert_eq!(node_ca["spec"]["isCA"].as_bool(), Some(true));
    assert_eq!(
        node_ca["spec"]["issuerRef"]["name"].as_str(),
        Some("nodewatch-ca")
    );
    assert_eq!(
        node_ca["spec"]["privateKey"]["rotationPolicy"].as_str(),
        Some("Never"),
        "the aggregators load the signing key at start"
    );
    let node_ca_secret = node_ca["spec"]["secretName"].as_str().unwrap();
    let sts_pod = &find(&docs, "StatefulSet", "nodewatch-aggregator")["spec"]["template"]["spec"];
    let agg_c = container(sts_pod, "aggregator");
    let text = find(&docs, "ConfigMap", "nodewatch-aggregator")["data"]["aggregator.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let agg: nodewatch_aggregator::config::File =
        nodewatch_proto::config::parse_yaml(&text, Path::new("aggregator.yaml")).unwrap();
    let b = agg.bootstrap.expect("bootstrap");
    for f in [&b.ca_cert, &b.ca_key] {
        let dir = f.parent().unwrap().to_str().unwrap();
        let (vol, _) = mount_of(sts_pod, agg_c, dir);
        assert_eq!(
            vol["secret"]["secretName"].as_str(),
            Some(node_ca_secret),
            "bootstrap {} is not from {node_ca_secret}",
            f.display()
        );
    }

    // Operator certificate for the CLI.
    let op = find(&docs, "Certificate", "nodewatch-operator-admin");
    assert_eq!(
        strs(&op["spec"]["uris"]),
        ["spiffe://nodewatch/operator/admin"]
    );
    assert!(strs(&op["spec"]["usages"]).contains(&"client auth"));

    // RBAC: the aggregator may create TokenReviews and get pods; the agent
    // only reads pods.
    let has_rule = |role: &Value, group: &str, resource: &str, verb: &str| {
        seq(&role["rules"]).iter().any(|r| {
            strs(&r["apiGroups"]).contains(&group)
                && strs(&r["resources"]).contains(&resource)
                && strs(&r["verbs"]).contains(&verb)
        })
    };
    let sa_bound = |kind: &str, name: &str| {
        docs.iter()
            .filter(|d| d.kind() == kind)
            .filter(|d| d.value["roleRef"]["name"].as_str() == Some(name))
            .flat_map(|d| seq(&d.value["subjects"]).iter())
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let tr = find(&docs, "ClusterRole", "nodewatch-aggregator-tokenreview");
    assert!(has_rule(
        tr,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));
    assert_eq!(
        sa_bound("ClusterRoleBinding", "nodewatch-aggregator-tokenreview"),
        ["nodewatch-aggregator"]
    );
    let pods = find(&docs, "Role", "nodewatch-aggregator-pods");
    assert!(has_rule(pods, "", "pods", "get"));
    assert_eq!(
        sa_bound("RoleBinding", "nodewatch-aggregator-pods"),
        ["nodewatch-aggregator"]
    );
    // The agent reads its kubelet's pod list (nodes/pods, never nodes/proxy,
    // which authorizes exec), the API server's pod list as the fallback, and
    // its Node object; nothing else, and nothing but reads.
    let agent_role = find(&docs, "ClusterRole", "nodewatch-agent");
    let allowed = [("nodes/pods", "get"), ("pods", "list"), ("nodes", "get")];
    for r in seq(&agent_role["rules"]) {
        assert_eq!(strs(&r["apiGroups"]), [""], "agent: core group only");
        for res in strs(&r["resources"]) {
            for v in strs(&r["verbs"]) {
                assert!(
                    allowed.contains(&(res, v)),
                    "agent may not {v} {res} (allowed: {allowed:?})"
                );
            }
        }
    }
    for (res, v) in allowed {
        assert!(has_rule(agent_role, "", res, v), "agent needs {v} {res}");
    }
    assert_eq!(
        sa_bound("ClusterRoleBinding", "nodewatch-agent"),
        ["nodewatch-agent"]
    );
}

#[test]
fn flux_kustomization_points_at_the_base() {
    let _host = nodewatch_tests::host_shared();
    let docs = flux_docs();
    let ks = find(&docs, "Kustomization", "nodewatch");
    let s = &ks["spec"];
    assert_eq!(s["path"].as_str(), Some("./deploy/kubernetes"));
    assert!(repo()
        .join(s["path"].as_str().unwrap())
        .join("kustomization.yaml")
        .is_file());
    assert_eq!(s["prune"].as_bool(), Some(true));
    assert_eq!(s["wait"].as_bool(), Some(true));
    let deps: Vec<&str> = seq(&s["dependsOn"])
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    for d in ["cert-manager", "kube-prometheus-stack"] {
        assert!(deps.contains(&d), "dependsOn {d}");
    }
    // It works wherever the repository keeps its Kustomizations: every
    // reference to another object names that object's namespace.
    for d in seq(&s["dependsOn"]) {
        assert!(
            d["namespace"].is_string(),
            "dependsOn {:?} names no namespace",
            d["name"]
        );
    }
    assert!(
        s["sourceRef"]["namespace"].is_string(),
        "sourceRef names no namespace"
    );
    // The base names its namespace everywhere; a different one would break
    // the certificate names (see the comment in ks.yaml).
    assert!(matches!(
        s["targetNamespace"].as_str(),
        None | Some("nodewatch")
    ));
    let git = find(&docs, "GitRepository", "nodewatch");
    assert_eq!(s["sourceRef"]["name"].as_str(), Some("nodewatch"));
    assert!(git["spec"]["url"].is_string());
}

/// The aggregators evaluate the same pack: nodewatch's own rule checker and
/// unit-test runner (`nodewatch-aggregator test-rules`) must accept it too.
#[test]
fn rule_pack_passes_the_aggregators_own_engine() {
    use nodewatch_aggregator::rules::unittest::{check_rule_files, run_test_files};
    let _host = nodewatch_tests::host_shared();
    let mut out = Vec::new();
    let code = check_rule_files(&[deploy("rules/nodewatch.rules.yml")], &mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "check rules:\n{text}");
    // Every rule the aggregators load reads series they hold.
    assert!(!text.contains("WARNING"), "check rules:\n{text}");
    let mut out = Vec::new();
    let code = run_test_files(&[deploy("rules/nodewatch.rules.test.yml")], &mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

// ---------------------------------------------------------------------------
// Optional components (deploy/kubernetes/components/*), built by kustomize
// itself (its Go library as PyPI's `pykustomize` ships it, called through
// ctypes), with Flux's postBuild.substitute applied as Flux does, then
// validated like the base.

/// Test values for the components' variables, as a Flux Kustomization's
/// `postBuild.substitute` would set them.
const FLUX_VARS: [(&str, &str); 8] = [
    ("NODEWATCH_AGGREGATOR_0_ADDRESS", "192.168.10.40"),
    ("NODEWATCH_AGGREGATOR_1_ADDRESS", "192.168.10.41"),
    ("NODEWATCH_AGGREGATOR_0_NAME", "nodewatch-0.home.arpa"),
    ("NODEWATCH_AGGREGATOR_1_NAME", "nodewatch-1.home.arpa"),
    ("NODEWATCH_FIREWALL_NODE", "opnsense"),
    ("NODEWATCH_NODE_CIDR", "10.10.0.0/24"),
    ("NODEWATCH_OPERATOR_CIDR", "192.168.10.0/24"),
    ("NODEWATCH_PROMETHEUS_NAMESPACE", "observability"),
];

const KUSTOMIZE_INSTALL: &str = "pip install --no-deps --ignore-requires-python pykustomize==0.1.4";

/// `kustomize build DIR` through libpykustomize (argv: library, directory).
const KUSTOMIZE_BUILD: &str = r#"
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.pykustomize_build.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.pykustomize_last_error.restype = ctypes.c_void_p
out = ctypes.c_void_p()
if lib.pykustomize_build(sys.argv[2].encode(), b"{}", ctypes.byref(out)) != 0:
    sys.exit(ctypes.string_at(lib.pykustomize_last_error()).decode())
sys.stdout.write(ctypes.string_at(out).decode())
"#;

/// Validates CiliumNetworkPolicies against the CRD's schema (the vendored
/// fixture): types, enums, patterns, CIDR formats, and unknown fields
/// (refused wherever the schema lists an object's properties, as the API
/// server's strict field validation does).
const CNP_CHECK: &str = r#"
import ipaddress, json, sys
import jsonschema, yaml
schema = json.load(open(sys.argv[1]))
def strict(s):
    if isinstance(s, dict):
        if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s \
                and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
strict(schema)
formats = jsonschema.FormatChecker()
@formats.checks("cidr", raises=ValueError)
def cidr(v):
    ipaddress.ip_network(v, strict=False)
    return True
validator = jsonschema.Draft7Validator(schema, format_checker=formats)
bad = 0
for doc in yaml.safe_load_all(open(sys.argv[2])):
    name = f"CiliumNetworkPolicy/{doc['metadata']['name']}"
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        print(f"FAIL {name}: {'.'.join(map(str, e.path))}: {e.message}")
    if errors:
        bad += 1
    else:
        print(f"ok {name}")
sys.exit(1 if bad else 0)
"#;

/// The Python that has pykustomize, and its kustomize library.
fn kustomize() -> Option<(PathBuf, PathBuf)> {
    let python = find_program("python3")?;
    let (ok, out) = run(Command::new(&python).args([
        "-c",
        "import importlib.util; print(importlib.util.find_spec('pykustomize').submodule_search_locations[0])",
    ]));
    let lib = Path::new(out.trim()).join("_lib/linux-amd64/libpykustomize.so");
    (ok && lib.is_file()).then_some((python, lib))
}

/// `../..` up to `/` from `from`, then `to`: kustomize takes relative paths only.
fn relative(from: &Path, to: &Path) -> String {
    let up = "../".repeat(from.components().count() - 1);
    format!("{up}{}", to.strip_prefix("/").unwrap().display())
}

/// [`kustomize`] where it can run; `None` after [`missing`] otherwise.
fn kustomize_or_missing() -> Option<(PathBuf, PathBuf)> {
    let found = kustomize();
    if found.is_none() {
        missing(&format!("kustomize's library ({KUSTOMIZE_INSTALL})"));
    }
    found
}

/// `components` built by kustomize, with Flux's substitutions made.
fn build_substituted(python: &Path, lib: &Path, components: &[&str]) -> Vec<Doc> {
    kustomize_build(python, lib, components)
        .iter()
        .map(flux_substitute)
        .collect()
}

/// Builds the base with `components` through kustomize, as an overlay (or
/// Flux's `spec.components`) would.
fn kustomize_build(python: &Path, lib: &Path, components: &[&str]) -> Vec<Doc> {
    let dir = tempfile::tempdir().unwrap();
    let base = deploy("kubernetes");
    let list: Vec<String> = components
        .iter()
        .map(|c| relative(dir.path(), &base.join("components").join(c)))
        .collect();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\ncomponents: [{}]\n",
            relative(dir.path(), &base),
            list.join(", ")
        ),
    )
    .unwrap();
    let script = dir.path().join("build.py");
    std::fs::write(&script, KUSTOMIZE_BUILD).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .arg(lib)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize build with {components:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("built.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    load_docs(&file)
}

fn substitution_disabled(d: &Doc) -> bool {
    d.value["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/substitute"].as_str()
        == Some("disabled")
}

/// Flux's `postBuild.substitute` on a built object: `${VAR}` becomes its
/// value, except in objects annotated `kustomize.toolkit.fluxcd.io/substitute: disabled`.
fn flux_substitute(d: &Doc) -> Doc {
    if substitution_disabled(d) {
        return d.clone();
    }
    let mut text = serde_yaml_ng::to_string(&d.value).unwrap();
    for (k, v) in FLUX_VARS {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    assert!(
        !text.contains("${"),
        "{}/{}: a variable no test value is set for:\n{text}",
        d.kind(),
        d.name()
    );
    Doc {
        file: d.file.clone(),
        value: serde_yaml_ng::from_str(&text).unwrap(),
    }
}

/// Runs kubernetes-validate (1.33, strict) on `docs`; `None` when it is missing.
fn kubernetes_validate(docs: &[&Doc]) -> Option<String> {
    let validator = find_program("kubernetes-validate")?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&d.value).unwrap());
    }
    std::fs::write(&file, text).unwrap();
    let (ok, out) = run(Command::new(validator)
        .args(["-k", KUBERNETES_VERSION, "--strict"])
        .arg(&file));
    assert!(ok, "kubernetes-validate failed:\n{out}");
    assert!(!out.contains("Couldn't find schema"), "{out}");
    assert_eq!(
        out.matches(" passed for resource ").count(),
        docs.len(),
        "every object validated:\n{out}"
    );
    Some(out)
}

/// Runs a Python check script on `docs`; asserts every one printed `ok`.
fn python_check(python: &Path, script: &str, args: &[&Path], docs: &[&Doc]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let path = dir.path().join("check.py");
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&d.value).unwrap());
    }
    std::fs::write(&file, text).unwrap();
    std::fs::write(&path, script).unwrap();
    let (ok, out) = run(Command::new(python).arg(&path).args(args).arg(&file));
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        docs.len(),
        "{out}"
    );
}

/// Every ConfigMap whose text holds `${…}` (the agent's own variables,
/// Grafana's) carries `kustomize.toolkit.fluxcd.io/substitute: disabled`, so a
/// Flux `postBuild.substitute` cannot blank it; no other object of the base
/// holds `${` at all.
#[test]
fn objects_with_dollar_braces_are_flux_safe() {
    let _host = nodewatch_tests::host_shared();
    let docs = render();
    let mut disabled = 0;
    for d in &docs {
        let text = serde_yaml_ng::to_string(&d.value).unwrap();
        if !text.contains("${") {
            continue;
        }
        assert_eq!(d.kind(), "ConfigMap", "{}/{} holds ${{", d.kind(), d.name());
        assert!(
            substitution_disabled(d),
            "ConfigMap/{} holds ${{…}} but lacks kustomize.toolkit.fluxcd.io/substitute: disabled",
            d.name()
        );
        disabled += 1;
    }
    assert!(disabled >= 2, "the agent config and the dashboard");
    // What Flux would do leaves them as they are.
    for d in docs.iter().filter(|d| substitution_disabled(d)) {
        assert_eq!(flux_substitute(d).value, d.value);
    }
}

#[test]
fn components_are_kustomize_components_that_kustomize_builds() {
    let _host = nodewatch_tests::host_shared();
    let dir = deploy("kubernetes/components");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["cilium-network-policy", "firewall", "network-policy"]
    );
    for n in &names {
        let k = &load_docs(&dir.join(n).join("kustomization.yaml"))[0].value;
        assert_eq!(k["kind"].as_str(), Some("Component"), "{n}");
        assert_eq!(
            k["apiVersion"].as_str(),
            Some("kustomize.config.k8s.io/v1alpha1"),
            "{n}"
        );
        // Every variable a component leaves for Flux is one of the documented ones.
        for r in strs(&k["resources"]) {
            let text = std::fs::read_to_string(dir.join(n).join(r)).unwrap();
            for var in text.split("${").skip(1) {
                let name = var.split('}').next().unwrap();
                assert!(
                    FLUX_VARS.iter().any(|(k, _)| *k == name),
                    "{n}/{r}: ${{{name}}} is not documented"
                );
            }
        }
    }
    let Some((python, lib)) = kustomize_or_missing() else {
        return;
    };
    // kustomize builds the base exactly as this file's renderer does.
    let built = kustomize_build(&python, &lib, &[]);
    let ours = render();
    assert_eq!(built.len(), ours.len());
    for d in &ours {
        let b = built
            .iter()
            .find(|b| b.kind() == d.kind() && b.name() == d.name())
            .unwrap_or_else(|| panic!("kustomize dropped {}/{}", d.kind(), d.name()));
        assert_eq!(b.value, d.value, "{}/{}", d.kind(), d.name());
    }
}

/// The firewall component: per-replica LoadBalancer Services with their
/// LB-IPAM addresses, those addresses and names in the server certificate,
/// the firewall's annotated ServiceAccount and the aggregators' right to read
/// it; every value from values.yaml, substituted as Flux does, and every
/// object valid against Kubernetes 1.33 and cert-manager's CRD.
#[test]
fn firewall_component_builds_and_validates() {
    let _host = nodewatch_tests::host_shared();
    let Some((python, lib)) = kustomize_or_missing() else {
        return;
    };
    let docs: Vec<Doc> = build_substituted(&python, &lib, &["firewall"]);
    assert!(
        !docs
            .iter()
            .any(|d| d.name() == "nodewatch-firewall" && d.kind() == "ConfigMap"),
        "values.yaml is local-config: kustomize leaves it out"
    );
    let sts = find(&docs, "StatefulSet", "nodewatch-aggregator");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let cert = find(&docs, "Certificate", "nodewatch-aggregator");
    let ips = strs(&cert["spec"]["ipAddresses"]);
    let dns = strs(&cert["spec"]["dnsNames"]);
    for i in 0..replicas {
        let svc = find(
            &docs,
            "Service",
            &format!("nodewatch-aggregator-{i}-external"),
        );
        assert_eq!(svc["spec"]["type"].as_str(), Some("LoadBalancer"));
        let addr = FLUX_VARS[i as usize].1;
        assert_eq!(
            svc["metadata"]["annotations"]["lbipam.cilium.io/ips"].as_str(),
            Some(addr)
        );
        assert_eq!(
            svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].as_str(),
            Some(format!("nodewatch-aggregator-{i}").as_str()),
            "one replica per Service"
        );
        let ports: Vec<u64> = seq(&svc["spec"]["ports"])
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert_eq!(ports, [7443], "only gRPC leaves the cluster");
        assert!(ips.contains(&addr), "certificate lacks {addr}: {ips:?}");
        let name = FLUX_VARS[2 + i as usize].1;
        assert!(dns.contains(&name), "certificate lacks {name}");
    }
    assert_eq!(ips.len() as u64, replicas);
    // The base's names stay.
    assert!(dns.contains(&"nodewatch-aggregator.nodewatch.svc"));
    // Not scraped twice: the ServiceMonitor's selector leaves them out.
    let sm = find(&docs, "ServiceMonitor", "nodewatch-aggregator");
    let sel = sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    for d in docs.iter().filter(|d| d.kind() == "Service") {
        let labels = &d.value["metadata"]["labels"];
        let selected = sel.iter().all(|(k, v)| &labels[k.as_str().unwrap()] == v);
        assert_eq!(
            selected,
            d.name() == "nodewatch-aggregator",
            "ServiceMonitor selects Service/{}",
            d.name()
        );
    }
    // The firewall's ServiceAccount names its node, and the aggregators may
    // read that one ServiceAccount.
    let sa = find(&docs, "ServiceAccount", "nodewatch-firewall");
    assert_eq!(
        sa["metadata"]["annotations"]["nodewatch.io/node-name"].as_str(),
        Some("opnsense")
    );
    assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));
    let role = find(&docs, "Role", "nodewatch-aggregator-firewall");
    let rules = seq(&role["rules"]);
    assert_eq!(rules.len(), 1);
    assert_eq!(strs(&rules[0]["resources"]), ["serviceaccounts"]);
    assert_eq!(strs(&rules[0]["verbs"]), ["get"]);
    assert_eq!(strs(&rules[0]["resourceNames"]), ["nodewatch-firewall"]);
    let rb = find(&docs, "RoleBinding", "nodewatch-aggregator-firewall");
    assert_eq!(
        rb["subjects"][0]["name"].as_str(),
        Some("nodewatch-aggregator")
    );
    // The aggregator's config lists that ServiceAccount as one that stands
    // for a node.
    let text = find(&docs, "ConfigMap", "nodewatch-aggregator")["data"]["aggregator.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let agg: nodewatch_aggregator::config::File =
        nodewatch_proto::config::parse_yaml(&text, Path::new("aggregator.yaml")).unwrap();
    let b = agg.bootstrap.expect("bootstrap");
    assert!(b
        .node_service_accounts
        .contains(&"system:serviceaccount:nodewatch:nodewatch-firewall".to_string()));

    let builtin: Vec<&Doc> = docs.iter().filter(|d| !d.is_custom()).collect();
    if kubernetes_validate(&builtin).is_none() {
        return missing(&format!("kubernetes-validate ({INSTALL})"));
    }
    let custom: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.api_version().starts_with("cert-manager.io/"))
        .collect();
    python_check(&python, CRD_CHECK, &[], &custom);
}

#[test]
fn network_policy_components_admit_only_agents_prometheus_and_operators() {
    let _host = nodewatch_tests::host_shared();
    let Some((python, lib)) = kustomize_or_missing() else {
        return;
    };
    let plain: Vec<Doc> = build_substituted(&python, &lib, &["network-policy"]);
    let np = find(&plain, "NetworkPolicy", "nodewatch-aggregator");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("nodewatch-aggregator")
    );
    assert_eq!(strs(&np["spec"]["policyTypes"]), ["Ingress"]);
    let rules = seq(&np["spec"]["ingress"]);
    let ports = |r: &Value| -> Vec<u64> {
        seq(&r["ports"])
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0]["from"][0]["ipBlock"]["cidr"].as_str(),
        Some("10.10.0.0/24")
    );
    assert_eq!(ports(&rules[0]), [7443, 9464]);
    assert_eq!(
        rules[1]["from"][0]["ipBlock"]["cidr"].as_str(),
        Some("192.168.10.0/24")
    );
    assert_eq!(ports(&rules[1]), [7443]);
    let prom = &rules[2]["from"][0];
    assert_eq!(
        prom["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("observability")
    );
    assert_eq!(
        prom["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("prometheus")
    );
    assert_eq!(ports(&rules[2]), [9464]);

    let cilium: Vec<Doc> = build_substituted(&python, &lib, &["cilium-network-policy"]);
    let cnp = find(&cilium, "CiliumNetworkPolicy", "nodewatch-aggregator");
    let rules = seq(&cnp["spec"]["ingress"]);
    let ports = |r: &Value| -> Vec<String> {
        seq(&r["toPorts"])
            .iter()
            .flat_map(|p| seq(&p["ports"]).iter())
            .filter_map(|p| p["port"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(rules.len(), 3);
    assert_eq!(strs(&rules[0]["fromEntities"]), ["host", "remote-node"]);
    assert_eq!(ports(&rules[0]), ["7443", "9464"]);
    assert_eq!(
        rules[1]["fromCIDRSet"][0]["cidr"].as_str(),
        Some("192.168.10.0/24")
    );
    assert_eq!(ports(&rules[1]), ["7443"]);
    assert_eq!(
        rules[2]["fromEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"].as_str(),
        Some("observability")
    );
    assert_eq!(ports(&rules[2]), ["9464"]);

    // Neither component changes anything of the base.
    let base = render();
    for docs in [&plain, &cilium] {
        assert_eq!(docs.len(), base.len() + 1);
    }
    let builtin: Vec<&Doc> = plain.iter().filter(|d| !d.is_custom()).collect();
    if kubernetes_validate(&builtin).is_none() {
        return missing(&format!("kubernetes-validate ({INSTALL})"));
    }
    let usable = run(Command::new(&python).args(["-c", "import jsonschema, yaml"])).0;
    if !usable {
        return missing(&format!("python3 with jsonschema ({INSTALL})"));
    }
    let schema = repo().join("tests/fixtures/kubernetes/cilium/ciliumnetworkpolicy-v2.schema.json");
    let cnps: Vec<&Doc> = cilium
        .iter()
        .filter(|d| d.kind() == "CiliumNetworkPolicy")
        .collect();
    python_check(&python, CNP_CHECK, &[&schema], &cnps);
    // The check is not vacuous: a misspelt field, an unknown entity and a
    // bad CIDR each fail it.
    for (what, bad) in [
        ("fromEntity", "fromEntity: [host]"),
        ("entity", "fromEntities: [nodes]"),
        ("cidr", "fromCIDRSet: [{cidr: 192.168.10.0/33}]"),
    ] {
        let mut doc = cnps[0].clone();
        let rule: Value = serde_yaml_ng::from_str(&format!(
            "{bad}\ntoPorts: [{{ports: [{{port: \"7443\", protocol: TCP}}]}}]"
        ))
        .unwrap();
        doc.value["spec"]["ingress"][0] = rule;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(&doc.value).unwrap()).unwrap();
        let script = dir.path().join("check.py");
        std::fs::write(&script, CNP_CHECK).unwrap();
        let (ok, out) = run(Command::new(&python).arg(&script).arg(&schema).arg(&file));
        assert!(!ok && out.contains("FAIL"), "{what}: accepted:\n{out}");
    }
}
