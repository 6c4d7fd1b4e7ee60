//! The `gntsim` simulator: every built-in scenario runs clean on `fast` and `xen` in a short
//! mode, the report's numbers agree with each other and with the library's counters,
//! malformed scenarios give the documented errors (field path + line), the JSON report
//! follows its schema, and `--plot` writes SVG files.
//!
//! Runs are short (0.2 s per design, or an operation cap) so the whole file stays well under
//! 30 s; nothing here asserts on timing.

#![cfg(feature = "sim")]

use gnttab::sim::{self, builtin, Report, RunRequest, Scenario};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn short_run(name: &str) -> Report {
    let sc = sim::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let req = RunRequest {
        seconds: Some(0.2),
        ..RunRequest::default()
    };
    let r = sim::run(&sc, &req, &|_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let designs: Vec<&str> = r.results.iter().map(|d| d.design.as_str()).collect();
    assert_eq!(designs, ["fast", "xen"], "default designs");
    for d in &r.results {
        assert!(
            d.verdict.clean,
            "{name} on {}: verdict not clean: {:#?}",
            d.design, d.verdict
        );
    }
    consistent(name, &r);
    r
}

fn okay(d: &sim::report::DesignReport, kind: &str) -> u64 {
    d.latency
        .get(kind)
        .and_then(|l| l.statuses.get("okay"))
        .copied()
        .unwrap_or(0)
}

/// Cross-checks that hold for every run.
fn consistent(name: &str, r: &Report) {
    assert_eq!(r.schema_version, sim::report::SCHEMA_VERSION);
    assert_eq!(r.results[0].ratio_to_first, 1.0);
    for d in &r.results {
        let ctx = format!("{name} on {}", d.design);
        // ops is the sum of the elements of every hypercall kind.
        let elems: u64 = d.latency.values().map(|l| l.elements).sum();
        assert_eq!(d.ops, elems, "{ctx}: ops");
        let calls: u64 = d.latency.values().map(|l| l.calls).sum();
        assert_eq!(d.hypercalls, calls, "{ctx}: hypercalls");
        if d.elapsed_s > 0.0 {
            let want = d.ops as f64 / d.elapsed_s;
            assert!(
                (d.ops_per_sec - want).abs() <= 1e-6 * want.max(1.0),
                "{ctx}: ops/s"
            );
        }
        // Every element has exactly one status.
        for (k, l) in &d.latency {
            let n: u64 = l.statuses.values().sum();
            assert_eq!(n, l.elements, "{ctx}: statuses of {k}");
            let h: u64 = l.histogram.iter().map(|b| b[2]).sum();
            assert_eq!(h, l.calls, "{ctx}: histogram of {k}");
            assert!(
                l.p50_ns <= l.p99_ns && l.p99_ns <= l.max_ns,
                "{ctx}: {k} percentiles"
            );
        }
        // The threads' okay statuses match the library's own map counter.
        assert_eq!(
            okay(d, "map"),
            d.maps.ok,
            "{ctx}: successful maps vs Domain::stats"
        );
        assert_eq!(d.maps.fast + d.maps.slow, d.maps.ok, "{ctx}: fast + slow");
        if d.design == "xen" {
            assert_eq!(d.maps.fast, 0, "{ctx}: xen has no fast slots");
        }
        // Forged operations never succeed.
        assert_eq!(
            okay(d, "forged_map") + okay(d, "forged_unmap"),
            0,
            "{ctx}: forged ops"
        );
        // What the checker saw live is exactly what the drain then unmapped.
        assert_eq!(
            d.verdict.live_mappings as u64, d.verdict.drained,
            "{ctx}: live vs drained"
        );
    }
}

#[test]
fn builtin_default() {
    let r = short_run("default");
    for d in &r.results {
        assert!(d.maps.ok > 0, "{}: no map succeeded", d.design);
        // Requests unmap what they mapped, so every successful map was unmapped.
        assert_eq!(okay(d, "unmap"), d.maps.ok, "{}", d.design);
        assert!(
            d.guest.grants > 0 && d.guest.ends_ok > 0,
            "{}: guests idle",
            d.design
        );
    }
    assert!(r.results[0].maps.fast > 0, "fast design used no fast slot");
}

#[test]
fn builtin_netback() {
    let r = short_run("netback");
    for d in &r.results {
        assert!(
            okay(d, "copy") > 0 && d.copy_bytes > 0,
            "{}: no copy",
            d.design
        );
        assert!(
            !d.latency.contains_key("map"),
            "{}: netback does not map",
            d.design
        );
        let grow = &d.events[0];
        assert!(grow.fired_s.is_some(), "{}: grow did not fire", d.design);
        assert_eq!(
            okay(d, "setup"),
            1,
            "{}: setup_table: {}",
            d.design,
            grow.outcome
        );
    }
}

#[test]
fn builtin_blkback() {
    let r = short_run("blkback");
    for d in &r.results {
        assert!(
            d.persistent.hits > 0 && d.persistent.misses > 0,
            "{}: {:?}",
            d.design,
            d.persistent
        );
        // Both backends served requests.
        assert!(
            d.threads.iter().all(|t| t.ops > 0),
            "{}: an idle backend",
            d.design
        );
    }
}

#[test]
fn builtin_churn() {
    let r = short_run("churn");
    for d in &r.results {
        let c = d.churn.as_ref().expect("churn report");
        assert!(
            c.created > 4,
            "{}: only {} instances created",
            d.design,
            c.created
        );
        assert!(c.destroyed > 0, "{}: nothing destroyed", d.design);
        assert!(d.teardown_longest_step_ns.is_some());
    }
}

#[test]
fn builtin_teardown() {
    let r = short_run("teardown");
    for d in &r.results {
        let t = d
            .teardowns
            .iter()
            .find(|t| t.source == "event")
            .expect("the destroy event ran");
        assert_eq!(t.domain, "victim");
        assert!(
            t.mappings_released > 0,
            "{}: the victim held nothing",
            d.design
        );
        assert!(t.steps > 1 && t.longest_step_ns > 0 && t.longest_step_ns <= t.busy_ns);
        assert_eq!(t.steps as usize, t.timeline.len());
        let victim = d.threads.iter().find(|th| th.domain == "victim").unwrap();
        assert!(
            victim.stopped_by_kill_s.is_some(),
            "{}: victim kept running",
            d.design
        );
        // Teardown released exactly what the victim held when it was stopped.
        assert_eq!(
            t.mappings_released, victim.held_at_end as u64,
            "{}",
            d.design
        );
        assert_eq!(d.teardown_longest_step_ns, Some(t.longest_step_ns));
    }
}

#[test]
fn builtin_adversarial() {
    let r = short_run("adversarial");
    for d in &r.results {
        assert!(d.guest.flips > 0, "{}: nobody rewrote an entry", d.design);
        let forged = d.latency.get("forged_unmap").map_or(0, |l| l.elements);
        assert!(forged > 0, "{}: nothing forged", d.design);
        assert!(
            d.verdict.adversarial_domains.contains(&"evil0".to_string()),
            "{}: {:?}",
            d.design,
            d.verdict.adversarial_domains
        );
        assert!(!d.verdict.adversarial_domains.contains(&"good".to_string()));
    }
}

#[test]
fn builtin_iommu() {
    let r = short_run("iommu");
    for d in &r.results {
        assert!(d.flushes.iotlb > 0, "{}: no IOTLB flush", d.design);
        assert!(d.threads.iter().all(|t| t.ops > 0));
    }
}

#[test]
fn every_builtin_is_tested_and_parses() {
    let tested = [
        "default",
        "netback",
        "blkback",
        "churn",
        "teardown",
        "adversarial",
        "iommu",
    ];
    let names: Vec<&str> = builtin::BUILTINS.iter().map(|b| b.name).collect();
    assert_eq!(names, tested);
    for b in builtin::BUILTINS {
        let sc = b.load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sc.name, b.name);
        assert!(!sc.description().is_empty(), "{}: no description", b.name);
        // The embedded text is the file in scenarios/.
        let file = std::fs::read_to_string(format!(
            "{}/scenarios/{}.toml",
            env!("CARGO_MANIFEST_DIR"),
            b.name
        ))
        .unwrap();
        assert_eq!(file, b.source);
    }
}

#[test]
fn ops_cap_bounds_every_thread() {
    let sc = sim::load("default").unwrap();
    let req = RunRequest {
        seconds: Some(30.0),
        ops_cap: Some(40),
        ..RunRequest::default()
    };
    let r = sim::run(&sc, &req, &|_, _| {}).unwrap();
    for d in &r.results {
        assert!(d.verdict.clean);
        for t in &d.threads {
            assert_eq!(t.ops, 40, "{} thread[{}]", d.design, t.index);
        }
        // Two backend threads, 40 requests of 8 maps each.
        assert_eq!(d.latency["map"].elements, 2 * 40 * 8);
        assert_eq!(d.latency["map"].calls, 2 * 40);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

const BASE: &str = r#"[[domain]]
name = "back"
vcpus = 2

[[domain]]
name = "guest"
count = 2

[[domain.grant]]
to = "back"
refs = [0, 64]

[[thread]]
domain = "back"
mix = { request = 1 }
granters = ["guest"]
"#;

/// Parses `src` (BASE with one edit), expecting an error at the line containing `marker`.
fn bad(src: &str, marker: &str, field: &str, msg: &str) {
    let err = Scenario::parse(src, "bad.toml", "bad").expect_err("should not parse");
    let line = src
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in source"))
        + 1;
    assert_eq!(err.line, line, "line of {err}");
    assert_eq!(err.field, field, "field of {err}");
    assert!(
        err.message.contains(msg),
        "message of {err}: wanted {msg:?}"
    );
    // The rendering names the file, line, column and field, and quotes the line.
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "bad.toml:{line}:{}: field `{field}`: ",
            err.column
        )),
        "{text}"
    );
    assert!(text.contains(src.lines().nth(line - 1).unwrap()), "{text}");
}

#[test]
fn base_scenario_parses() {
    let sc = Scenario::parse(BASE, "base.toml", "base").unwrap();
    assert_eq!(sc.name, "base");
    assert_eq!(sc.plan.domains.len(), 3); // back, guest0, guest1
    assert_eq!(sc.plan.threads[0].refs, (0, 64));
}

#[test]
fn error_wrong_type() {
    bad(
        &BASE.replace("vcpus = 2", "vcpus = \"two\""),
        "vcpus",
        "domain[0].vcpus",
        "invalid type: string \"two\"",
    );
}

#[test]
fn error_unknown_field() {
    bad(
        &BASE.replace("vcpus = 2", "vcpu = 2"),
        "vcpu = 2",
        "domain[0]",
        "unknown field `vcpu`",
    );
    bad(
        &BASE.replace("mix = { request = 1 }", "mix = { requests = 1 }"),
        "requests",
        "thread[0].mix",
        "unknown field `requests`",
    );
}

#[test]
fn error_missing_field() {
    bad(
        &BASE.replace("mix = { request = 1 }\n", ""),
        "[[thread]]",
        "thread[0]",
        "missing field `mix`",
    );
}

#[test]
fn error_syntax() {
    bad(
        &BASE.replace("vcpus = 2", "vcpus = "),
        "vcpus",
        "domain[0].vcpus",
        "",
    );
}

#[test]
fn error_nested_array_element() {
    bad(
        &BASE.replace("refs = [0, 64]", "refs = [0, \"x\"]"),
        "refs = [0",
        "domain[1].grant[0].refs[1]",
        "expected u32",
    );
}

#[test]
fn error_unknown_domain() {
    bad(
        &BASE.replace("granters = [\"guest\"]", "granters = [\"guest\", \"gust\"]"),
        "gust",
        "thread[0].granters[1]",
        "unknown domain \"gust\"",
    );
    bad(
        &BASE.replace("to = \"back\"", "to = \"bak\""),
        "bak",
        "domain[1].grant[0].to",
        "unknown domain \"bak\"",
    );
}

#[test]
fn error_vcpu_out_of_range_or_shared() {
    bad(
        &BASE.replace("mix = { request = 1 }", "mix = { request = 1 }\nvcpu = 2"),
        "vcpu = 2",
        "thread[0].vcpu",
        "has 2 vCPU(s)",
    );
    let two = format!("{BASE}\n[[thread]]\ndomain = \"back\"\nmix = {{ map = 1 }}\ngranters = [\"guest\"]\nvcpu = 0\n");
    bad(
        &two,
        "vcpu = 0",
        "thread[1].vcpu",
        "already driven by thread[0]",
    );
}

#[test]
fn error_semantic_ranges() {
    bad(
        &BASE.replace("refs = [0, 64]", "refs = [64, 0]"),
        "refs = [64",
        "domain[1].grant[0].refs",
        "first < end",
    );
    bad(
        &BASE.replace("refs = [0, 64]", "refs = [0, 40000]"),
        "refs = [0",
        "domain[1].grant[0].refs",
        "beyond max_grant_frames",
    );
    let ev = format!("{BASE}\n[[event]]\nat = \"150%\"\nkind = \"destroy\"\ndomain = \"back\"\n");
    bad(&ev, "150%", "event[0].at", "percentage");
    let ev = format!("{BASE}\n[[event]]\nat = 0.1\nkind = \"destroy\"\ndomain = \"guest\"\n");
    bad(&ev, "domain = \"guest\"", "event[0].domain", "is a group");
}

#[test]
fn error_too_many_hypercall_threads() {
    // 61 vCPU threads: more than the machine's 64 pCPU slots minus the 4 kept free.
    let mut src = String::from("[[domain]]\nname = \"back\"\nvcpus = 61\n\n[[domain]]\nname = \"g\"\n\n[[domain.grant]]\nto = \"back\"\nrefs = [0, 64]\n");
    for v in 0..61 {
        src.push_str(&format!("\n[[thread]] # t{v}\ndomain = \"back\"\nvcpu = {v}\nmix = {{ request = 1 }}\ngranters = [\"g\"]\n"));
    }
    bad(
        &src,
        "# t60",
        "thread[60]",
        "at most 60 threads may issue hypercalls",
    );
}

#[test]
fn error_unreadable_file_and_unknown_name() {
    let e = sim::load("/nonexistent/dir/x.toml").unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.message.contains("no built-in scenario"), "{e}");
    let e = Scenario::from_file(std::path::Path::new("/nonexistent.toml")).unwrap_err();
    assert!(e.message.contains("cannot read"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The binary: CLI, JSON, plots
// ---------------------------------------------------------------------------------------------

fn gntsim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gntsim"))
        .args(args)
        .output()
        .expect("run gntsim")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gntsim-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cli_list_show_check_and_usage_errors() {
    let o = gntsim(&["list"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for b in builtin::BUILTINS {
        assert!(out.contains(b.name), "list lacks {}", b.name);
    }
    for d in gnttab::design::DESIGN_NAMES {
        assert!(out.contains(d), "list lacks {d}");
    }
    let o = gntsim(&["show", "netback"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        builtin::find("netback").unwrap().source
    );

    let o = gntsim(&["check", "teardown"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = scratch("check");
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        BASE.replace("granters = [\"guest\"]", "granters = [\"gust\"]"),
    )
    .unwrap();
    let o = gntsim(&["check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(":16:13: field `thread[0].granters[0]`: unknown domain \"gust\""),
        "{err}"
    );

    let o = gntsim(&["run", "default", "--design", "fast,nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown design \"nope\""));
    let o = gntsim(&["run", "no-such-scenario"]);
    assert_eq!(o.status.code(), Some(2));
    let o = gntsim(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for w in ["run", "list", "check", "show", "Examples"] {
        assert!(help.contains(w), "--help lacks {w}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks `v[path]` exists and has the given JSON type.
fn has(v: &Value, path: &str, ty: &str) {
    let mut cur = v;
    for k in path.split('.') {
        cur = match k.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[k],
        };
    }
    let ok = match ty {
        "string" => cur.is_string(),
        "number" => cur.is_number(),
        "integer" => cur.is_u64(),
        "bool" => cur.is_boolean(),
        "array" => cur.is_array(),
        "object" => cur.is_object(),
        "number|null" => cur.is_number() || cur.is_null(),
        "integer|null" => cur.is_u64() || cur.is_null(),
        _ => unreachable!(),
    };
    assert!(ok, "{path}: expected {ty}, found {cur}");
}

#[test]
fn json_report_follows_the_schema() {
    let dir = scratch("json");
    let f = dir.join("r.json");
    let o = gntsim(&[
        "run",
        "teardown",
        "--seconds",
        "0.2",
        "-q",
        "--json",
        f.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).expect("valid JSON");
    assert_eq!(v["schema"], "gntsim-report");
    assert_eq!(v["schema_version"], 1);
    for (p, t) in [
        ("gnttab_version", "string"),
        ("scenario.name", "string"),
        ("scenario.origin", "string"),
        ("scenario.description", "string"),
        ("scenario.spec", "object"),
        ("scenario.spec.domain", "array"),
        ("scenario.spec.thread", "array"),
        ("scenario.toml", "string"),
        ("run.designs", "array"),
        ("run.seconds", "number"),
        ("run.seed", "integer"),
        ("run.cores", "integer"),
        ("run.threads_per_design", "integer"),
        ("run.timer_overhead_ns", "integer"),
        ("not_measured", "array"),
        ("results", "array"),
    ] {
        has(&v, p, t);
    }
    assert_eq!(v["scenario"]["name"], "teardown");
    assert_eq!(v["run"]["designs"], serde_json::json!(["fast", "xen"]));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (i, r) in results.iter().enumerate() {
        let p = |s: &str| format!("results.{i}.{s}");
        for (k, t) in [
            ("design", "string"),
            ("elapsed_s", "number"),
            ("ops", "integer"),
            ("hypercalls", "integer"),
            ("ops_per_sec", "number"),
            ("ratio_to_first", "number"),
            ("latency", "object"),
            ("latency.map.calls", "integer"),
            ("latency.map.elements", "integer"),
            ("latency.map.mean_ns", "number"),
            ("latency.map.p50_ns", "integer"),
            ("latency.map.p90_ns", "integer"),
            ("latency.map.p99_ns", "integer"),
            ("latency.map.p999_ns", "integer"),
            ("latency.map.max_ns", "integer"),
            ("latency.map.statuses", "object"),
            ("latency.map.statuses.okay", "integer"),
            ("latency.map.histogram", "array"),
            ("latency.map.histogram.0", "array"),
            ("latency.map.histogram.0.2", "integer"),
            ("latency.query.p99_ns", "integer"),
            ("latency_in_teardown", "object"),
            ("maps.ok", "integer"),
            ("maps.fast", "integer"),
            ("maps.slow", "integer"),
            ("maps.fast_fraction", "number|null"),
            ("flushes.tlb", "integer"),
            ("flushes.iotlb", "integer"),
            ("flushes.tlb_per_op", "number|null"),
            ("flushes.iotlb_per_op", "number|null"),
            ("guest", "object"),
            ("persistent.hits", "integer"),
            ("copy_bytes", "integer"),
            ("teardowns", "array"),
            ("teardowns.0.domain", "string"),
            ("teardowns.0.source", "string"),
            ("teardowns.0.pause_ns", "integer"),
            ("teardowns.0.steps", "integer"),
            ("teardowns.0.longest_step_ns", "integer"),
            ("teardowns.0.mappings_released", "integer"),
            ("teardowns.0.destroyed", "bool"),
            ("teardowns.0.timeline", "array"),
            ("teardown_longest_step_ns", "integer|null"),
            ("events", "array"),
            ("events.0.kind", "string"),
            ("events.0.fired_s", "number|null"),
            ("events.0.outcome", "string"),
            ("threads", "array"),
            ("threads.0.index", "integer"),
            ("threads.0.domain", "string"),
            ("threads.0.ops", "integer"),
            ("threads.0.hypercalls", "object"),
            ("timeline", "array"),
            ("verdict.clean", "bool"),
            ("verdict.live_mappings", "integer"),
            ("verdict.violations", "array"),
            ("verdict.drained", "integer"),
            ("verdict.violations_after_drain", "array"),
            ("verdict.anomalies", "array"),
            ("verdict.anomaly_count", "integer"),
            ("verdict.adversarial_domains", "array"),
        ] {
            has(&v, &p(k), t);
        }
        assert_eq!(r["events"][0]["kind"], "destroy");
        assert_eq!(r["verdict"]["clean"], true);
        for pt in r["timeline"].as_array().unwrap() {
            let pt = pt.as_array().unwrap();
            assert!(pt.len() == 2 && pt[0].is_number() && pt[1].is_number());
        }
    }
    // The echoed scenario parses back to the same plan.
    let echoed = v["scenario"]["toml"].as_str().unwrap();
    assert_eq!(echoed, builtin::find("teardown").unwrap().source);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plot_writes_svg_files() {
    let dir = scratch("plot");
    let o = gntsim(&[
        "run",
        "teardown",
        "--seconds",
        "0.2",
        "-q",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["throughput.svg", "latency.svg", "teardown.svg"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.len() > 1000, "{f} is tiny");
        assert!(
            text.trim_start().starts_with("<svg"),
            "{f} does not start with <svg"
        );
        assert!(
            text.trim_end().ends_with("</svg>"),
            "{f} does not end with </svg>"
        );
        assert_eq!(
            text.matches("<svg").count(),
            text.matches("</svg>").count(),
            "{f}"
        );
        assert!(
            text.contains("fast") && text.contains("xen"),
            "{f} lacks design names"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
