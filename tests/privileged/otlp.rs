//! OTLP export checked by a real receiver (otlp_receiver.rs, gRPC or HTTP):
//! a daemon exporting to it governs a cgroup, gets a policy applied through
//! the API, sees a denied connect from the workload, quarantines and
//! releases it and stops governing it; the receiver decodes what arrived and
//! the test checks the spans, the decision log record and the metrics
//! against what the API and the kernel said. A collector that is down costs
//! counted export errors and nothing else.

use std::time::Duration;

use forge_agent::{
    api::{Request, client::call, daemon, protocol::Document},
    ebpf::Want,
    telemetry::{Otlp, OtlpConfig, Protocol, Signal},
    workload::{Action, run_action_in},
};
use forge_tests::{DaemonFixture, EPERM, check, expect, fail};
use libtest_mimic::Failed;
use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value::Value},
    logs::v1::LogRecord,
    metrics::v1::{Metric, metric::Data, number_data_point},
    resource::v1::Resource,
    trace::v1::Span,
};
use serde_json::Value as Json;

use crate::{
    free_port, listener,
    otlp_receiver::{Received, Receiver, Transport},
};

/// Batches and metric collections every half second.
const INTERVAL_MS: u64 = 500;
const WAIT: Duration = Duration::from_secs(30);
const ACTOR: &str = "otlp-test";
const REASON: &str = "checking the export";

/// The policy: connects to `deny_port` denied by rule `otlp-deny`; `extra`
/// adds a second rule (the applied version).
fn doc(deny_port: u16, extra: bool) -> Document {
    let extra = if extra {
        "    - {name: otlp-extra, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: 9}\n"
    } else {
        ""
    };
    Document {
        name: "otlp.yaml".into(),
        text: format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: otlp}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  trust: verified
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: otlp-deny, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {deny_port}}}
{extra}  escalation:
    compromised:
      quarantine: true
"
        ),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn text<'a>(attrs: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => s,
        _ => "",
    }
}

fn int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn texts(attrs: &[KeyValue], key: &str) -> Vec<String> {
    let Some(Value::ArrayValue(a)) = attr(attrs, key) else { return Vec::new() };
    a.values
        .iter()
        .filter_map(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn ints(attrs: &[KeyValue], key: &str) -> Vec<i64> {
    let Some(Value::ArrayValue(a)) = attr(attrs, key) else { return Vec::new() };
    a.values
        .iter()
        .filter_map(|v| match &v.value {
            Some(Value::IntValue(i)) => Some(*i),
            _ => None,
        })
        .collect()
}

/// Every span received, with its resource.
fn spans(r: &Received) -> Vec<(Option<&Resource>, &Span)> {
    r.traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans.iter().flat_map(move |ss| ss.spans.iter().map(move |s| (rs.resource.as_ref(), s)))
        })
        .collect()
}

/// Every log record received.
fn records(r: &Received) -> Vec<&LogRecord> {
    r.logs
        .iter()
        .flat_map(|l| &l.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .collect()
}

/// The metrics of the last metrics request.
fn last_metrics(r: &Received) -> Vec<&Metric> {
    r.metrics
        .last()
        .into_iter()
        .flat_map(|m| &m.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .collect()
}

/// The value of the one point of `name` whose attributes include `want`.
fn point(metrics: &[&Metric], name: &str, want: &[(&str, &str)], cgroup_id: Option<i64>) -> Option<i64> {
    let m = metrics.iter().find(|m| m.name == name)?;
    let points = match m.data.as_ref()? {
        Data::Sum(s) if s.is_monotonic => &s.data_points,
        Data::Gauge(g) => &g.data_points,
        _ => return None,
    };
    let p = points.iter().find(|p| {
        want.iter().all(|(k, v)| text(&p.attributes, k) == *v)
            && cgroup_id.is_none_or(|id| int(&p.attributes, "cgroup_id") == Some(id))
    })?;
    match p.value? {
        number_data_point::Value::AsInt(i) => Some(i),
        number_data_point::Value::AsDouble(_) => None,
    }
}

pub(crate) fn over_grpc() -> Result<(), Failed> {
    exported_and_decoded(Transport::Grpc)
}

pub(crate) fn over_http() -> Result<(), Failed> {
    exported_and_decoded(Transport::Http)
}

fn exported_and_decoded(transport: Transport) -> Result<(), Failed> {
    let receiver = Receiver::start(transport)?;
    let (protocol, name) = match transport {
        Transport::Grpc => (Protocol::Grpc, "otlp-grpc"),
        Transport::Http => (Protocol::Http, "otlp-http"),
    };
    let endpoint = format!("http://{}", receiver.addr);
    let otlp =
        Otlp::start(OtlpConfig::new(&endpoint, protocol, Some(INTERVAL_MS)).map_err(fail)?).map_err(fail)?;
    let denied = listener("127.0.0.1:0")?;
    let d = DaemonFixture::start(
        name,
        vec![doc(denied.port(), false)],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| d.telemetry = Some(otlp),
    )?;
    let id = i64::try_from(d.cgroup.id).map_err(fail)?;
    let cgroup = d.cgroup.path.display().to_string();
    let workload = daemon::workload_of(&d.cgroup);

    // A policy apply through the API: two rules now.
    let v2 = doc(denied.port(), true);
    let applied = call(&d.socket, &Request::PolicyApply { documents: vec![v2.clone()] }).map_err(fail)?;
    let generation = applied["swapped"][0]["generation"].as_i64().ok_or("no generation swapped")?;
    let status = call(&d.socket, &Request::Status).map_err(fail)?;
    let tier = status["governed"][0]["tier"].as_str().unwrap_or_default().to_string();
    let set = daemon::build_set(&[v2]).map_err(|e| e.message)?;
    let rule_id = set
        .compile_for(&workload, tier.parse().map_err(fail)?, 1)
        .map_err(|e| format!("{:?}", e.0))?
        .rules
        .iter()
        .find(|r| r.name == "otlp-deny")
        .map(|r| i64::from(r.id))
        .ok_or("no rule otlp-deny")?;

    // A denied connect by the governed workload.
    let exe = std::env::current_exe().map_err(fail)?;
    expect("denied connect", run_action_in(&d.cgroup, &exe, &Action::Connect(denied)).map_err(fail)?, EPERM)?;

    // Quarantine, release, and the end of governing.
    let q = call(
        &d.socket,
        &Request::Quarantine { cgroup: cgroup.clone(), actor: ACTOR.into(), reason: REASON.into() },
    )
    .map_err(fail)?;
    let r =
        call(&d.socket, &Request::Release { cgroup: cgroup.clone(), actor: ACTOR.into() }).map_err(fail)?;
    call(&d.socket, &Request::Ungovern { cgroup: cgroup.clone() }).map_err(fail)?;

    // Spans.
    let names = ["forge.policy.apply", "forge.quarantine", "forge.release", "forge.workload.run"];
    let got = receiver.wait_for("the four spans", WAIT, |r| {
        let s = spans(r);
        let one =
            |n: &str| s.iter().find(|(_, sp)| sp.name == n).map(|(res, sp)| (res.cloned(), (*sp).clone()));
        let found: Vec<_> = names.iter().filter_map(|n| one(n)).collect();
        (found.len() == names.len()).then_some(found)
    })?;
    let [(resource, apply), (_, quarantine), (_, release), (_, run)] =
        <[_; 4]>::try_from(got).map_err(|_| "four spans")?;

    let res = resource.ok_or("spans without a resource")?.attributes;
    let host = nix::unistd::gethostname().map_err(fail)?.to_string_lossy().into_owned();
    check!(text(&res, "service.name") == "forge", "service.name: {res:?}");
    check!(text(&res, "host.name") == host, "host.name: {res:?}");
    check!(text(&res, "service.version") == env!("CARGO_PKG_VERSION"), "service.version: {res:?}");

    let a = &apply.attributes;
    check!(
        text(a, "forge.outcome") == "applied"
            && text(a, "forge.policy.source") == "api"
            && texts(a, "forge.policy.names") == ["otlp"]
            && int(a, "forge.policy.rules") == Some(2)
            && int(a, "forge.policy.workloads") == Some(1)
            && ints(a, "forge.policy.generations") == [generation]
            && apply.end_time_unix_nano >= apply.start_time_unix_nano,
        "forge.policy.apply (generation {generation}): {a:?}"
    );

    let a = &quarantine.attributes;
    check!(q["frozen"] == true, "the quarantine did not freeze: {q}");
    check!(
        int(a, "forge.cgroup.id") == Some(id)
            && text(a, "forge.cgroup.path") == cgroup
            && text(a, "forge.workload") == workload.cgroup.as_deref().unwrap_or_default()
            && text(a, "forge.tier.from") == tier
            && text(a, "forge.tier.to") == "compromised"
            && text(a, "forge.quarantine.mode") == "freeze"
            && text(a, "forge.actor") == ACTOR
            && texts(a, "forge.quarantine.reason") == [REASON]
            && int(a, "forge.contained_us") == q["contained_us"].as_i64()
            && int(a, "forge.policy.generation") == q["generation"].as_i64(),
        "forge.quarantine ({q}): {a:?}"
    );
    let a = &release.attributes;
    check!(
        int(a, "forge.cgroup.id") == Some(id)
            && text(a, "forge.tier.from") == "compromised"
            && text(a, "forge.tier.to") == r["tier"].as_str().unwrap_or("?")
            && int(a, "forge.policy.generation") == r["generation"].as_i64()
            && text(a, "forge.actor") == ACTOR,
        "forge.release ({r}): {a:?}"
    );
    let a = &run.attributes;
    check!(
        int(a, "forge.cgroup.id") == Some(id)
            && text(a, "forge.run.end") == "ungoverned"
            && text(a, "forge.policy.names") == "otlp"
            && run.start_time_unix_nano <= apply.start_time_unix_nano
            && run.end_time_unix_nano >= release.end_time_unix_nano,
        "forge.workload.run: {run:?}"
    );
    // Quarantine and release belong to the workload's run.
    for s in [&quarantine, &release] {
        check!(
            s.trace_id == run.trace_id && s.parent_span_id == run.span_id,
            "{} is not in the run's trace: {s:?} vs {run:?}",
            s.name
        );
    }

    // The decision log record.
    let target = denied.to_string();
    let rec = receiver.wait_for("the deny record", WAIT, |r| {
        let all: Vec<LogRecord> = records(r)
            .into_iter()
            .filter(|l| l.event_name == "forge.decision" && int(&l.attributes, "forge.cgroup.id") == Some(id))
            .cloned()
            .collect();
        (!all.is_empty()).then_some(all)
    })?;
    let [rec] = rec.as_slice() else {
        return Err(format!("expected one decision record, got {rec:?}").into());
    };
    let a = &rec.attributes;
    let body = match rec.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.as_str(),
        _ => "",
    };
    check!(
        int(a, "forge.rule.id") == Some(rule_id)
            && text(a, "forge.rule.name") == "otlp-deny"
            && text(a, "forge.hook") == "cgroup/connect4"
            && text(a, "forge.verdict") == "deny"
            && text(a, "forge.mode") == "enforce"
            && text(a, "forge.tier") == tier
            && text(a, "forge.target") == target
            && rec.trace_id == run.trace_id
            && body.starts_with(&format!("denied net.connect {target}")),
        "the decision record (rule id {rule_id}, tier {tier}): {rec:?}"
    );

    // The metrics: the kernel's deny counter, the quarantine and release.
    let want = [("hook", "cgroup/connect4"), ("verdict", "deny"), ("mode", "enforce")];
    receiver.wait_for("forge.decisions deny 1, one quarantine and release", WAIT, |r| {
        let m = last_metrics(r);
        (point(&m, "forge.decisions", &want, Some(id)) == Some(1)
            && point(&m, "forge.quarantines", &[], None) == Some(1)
            && point(&m, "forge.releases", &[], None) == Some(1))
        .then_some(())
    })?;

    let status = call(&d.socket, &Request::Status).map_err(fail)?;
    let errors = &status["otlp"]["export_errors"];
    check!(
        Signal::ALL.iter().all(|s| errors[s.as_str()] == 0)
            && status["otlp"]["endpoint"] == endpoint.as_str(),
        "export errors with a working receiver: {}",
        status["otlp"]
    );
    if transport == Transport::Http {
        receiver.wait_for("protobuf bodies only", WAIT, |r| {
            (r.rejected.is_empty() && r.content_types.iter().all(|c| c == "application/x-protobuf"))
                .then_some(())
        })?;
    }
    drop(d);
    Ok(())
}

/// Nothing listens at the endpoint: exports fail and are counted, the API
/// answers and enforcement goes on.
pub(crate) fn collector_down() -> Result<(), Failed> {
    let endpoint = format!("http://127.0.0.1:{}", free_port("127.0.0.1:0")?);
    let otlp =
        Otlp::start(OtlpConfig::new(&endpoint, Protocol::Grpc, Some(200)).map_err(fail)?).map_err(fail)?;
    let errors = std::sync::Arc::clone(otlp.errors());
    let denied = listener("127.0.0.1:0")?;
    let d = DaemonFixture::start(
        "otlp-down",
        vec![doc(denied.port(), false)],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| d.telemetry = Some(otlp),
    )?;
    let exe = std::env::current_exe().map_err(fail)?;
    call(&d.socket, &Request::PolicyApply { documents: vec![doc(denied.port(), true)] }).map_err(fail)?;
    expect("denied connect", run_action_in(&d.cgroup, &exe, &Action::Connect(denied)).map_err(fail)?, EPERM)?;
    let deadline = std::time::Instant::now() + WAIT;
    while !Signal::ALL.iter().all(|s| errors.count(*s) > 0) {
        check!(
            std::time::Instant::now() < deadline,
            "export errors not counted: {:?}",
            Signal::ALL.map(|s| errors.count(s))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = std::time::Instant::now();
    let status = call(&d.socket, &Request::Status).map_err(fail)?;
    let answered = started.elapsed();
    let otlp: &Json = &status["otlp"];
    check!(
        Signal::ALL.iter().all(|s| otlp["export_errors"][s.as_str()].as_u64() >= Some(1))
            && otlp["last_error"].is_string(),
        "status: {otlp}"
    );
    check!(answered < Duration::from_secs(2), "status took {answered:?} with the collector down");
    expect(
        "denied connect, collector down",
        run_action_in(&d.cgroup, &exe, &Action::Connect(denied)).map_err(fail)?,
        EPERM,
    )?;
    drop(d);
    Ok(())
}
