//! Privileged integration tests: real programs, real cgroups, real kernel.
//!
//! Run as root with `cargo test -p forge-tests --test privileged`. Tests whose
//! backend this kernel refuses are reported as ignored with the kernel's
//! reason; `FORGE_REQUIRE=tracepoint,cgroup,lsm` turns those into failures
//! (`prometheus` in it makes a missing /usr/bin/prometheus a failure too,
//! `tmux` a missing /usr/bin/tmux, `clang` a missing WASI C compiler,
//! `nats-server` a missing NATS server, `forge` a missing agent binary).
//! `FORGE_EXPECT_UNAVAILABLE=lsm` makes the probe's report of BPF LSM as
//! unavailable a checked expectation (the guest whose LSM list has no `bpf`).
//! The `lsm_*` tests run inside QEMU guests through `cargo xtask vm-test`,
//! where the host's /usr is shared so every program above is there too.

mod agent_restart;
mod api;
mod capsule;
mod capsule_api;
mod capsule_component;
mod contain;
mod differential;
mod doctor;
mod fleet;
mod hotswap;
mod lifecycle;
mod lost;
mod lsm;
mod lsm_contain;
mod metrics;
mod net;
mod otlp;
mod otlp_receiver;
mod process;
mod quarantine;
mod shipped;
mod sigterm;
mod storm;
mod top;

use std::net::{SocketAddr, TcpListener};

use forge_agent::events::DecisionEvent;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

type TestFn = fn() -> Result<(), Failed>;

/// Tests of the agent's own logic (API, signing, telemetry, capsules, fleet,
/// scoring), which do the same on every kernel: the host and the primary
/// guest run them; `FORGE_TESTS=kernel` (the other guests, for CI time)
/// reports them ignored and runs the kernel-facing rest.
const AGENT_SIDE: &[&str] = &[
    "policy_apply_through_the_api",
    "signed_bundles_only_in_strict_mode",
    "benign_long_run_is_not_escalated",
    "event_storm_lost_events_in_status_and_trace",
    "metrics_scraped_by_prometheus",
    "top_live_view_in_tmux",
    "otlp_export_over_grpc_decoded_by_a_real_receiver",
    "otlp_export_over_http_decoded_by_a_real_receiver",
    "otlp_collector_down_counts_errors_enforcement_goes_on",
    "capsule_c_program_under_the_gate_recorded_and_replayed",
    "capsule_c_program_as_a_wasi_component_under_the_gate",
    "capsule_run_through_the_agent_kernel_backs_up_the_gate",
    "doctor_reports_whether_the_policy_in_force_is_signed",
    "fleet_bundles_reach_three_agents_survive_a_bus_partition_replays_refused",
    "fleet_quarantine_refused_on_other_nodes_forged_records_refused",
    "fleet_bundle_names_compose_older_bundle_under_a_new_name_refused",
    "fleet_quarantine_survives_bus_purge_and_restart_release_needs_k_of_n",
    "api_governed_callers_cannot_change_the_agent",
];
/// Kernel-facing tests whose paths never involve BPF LSM on 5.10 (where
/// the LSM path hooks are unavailable): the cgroup socket hooks, the
/// syscall tracepoint with calls no LSM hook refuses there, the exec
/// fallback, process events. The 5.10 guest with BPF LSM active runs them
/// exactly as the one where it is inert would; `FORGE_TESTS=lsm-inert`
/// (that one, for CI time) reports them ignored and runs the tests whose
/// outcome depends on BPF LSM (containment, self-protection, pins, the
/// agent's lifecycle).
const LSM_INDEPENDENT: &[&str] = &[
    "cgroup_connect4_deny_and_allow",
    "cgroup_bind4_and_ipv6",
    "cgroup_sendmsg_udp",
    "net_unspecified_destination_is_loopback",
    "net_connected_udp_is_decided_as_sendto",
    "net_raw_sockets_are_a_class_decided_at_creation",
    "syscall_deny_kills_caller",
    "syscall_rules_cover_i386_int80",
    "syscall_i386_numbers_are_not_x86_64_numbers",
    "syscall_rules_cover_x32",
    "exec_deny_tracepoint_fallback",
    "exec_fallback_decides_the_loaded_file_not_the_execve_string",
    "monitor_mode_counts_and_reports",
    "process_events_exec_and_exit",
    "hot_swap_never_mixes_generations_or_opens_a_gap",
    "differential_evaluator_vs_kernel_cgroup_tracepoint",
    "event_storm_drops_counted_per_cgroup_enforcement_intact",
];

/// A test that may find, once running, that it cannot run here (and says why).
type MaybeFn = fn() -> Result<Completion, Failed>;

/// Runs one test body and says how long it took (on stderr, before the
/// harness's result line): where a guest run's time goes, in CI's log.
fn timed<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    eprintln!("    {name}: {:.1} s", start.elapsed().as_secs_f64());
    out
}

/// A test with the backends it needs that may still report itself ignored.
fn trial_maybe(name: &'static str, needs: &'static [&'static str], f: MaybeFn) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(ignored) =
            forge_tests::gate_kernel_subset(AGENT_SIDE.contains(&name), LSM_INDEPENDENT.contains(&name))
        {
            return Ok(ignored);
        }
        if let Some(ignored) = forge_tests::gate(needs)? {
            return Ok(ignored);
        }
        timed(name, f)
    })
}

/// A test with the backends it needs.
fn trial(name: &'static str, needs: &'static [&'static str], f: TestFn) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(ignored) =
            forge_tests::gate_kernel_subset(AGENT_SIDE.contains(&name), LSM_INDEPENDENT.contains(&name))
        {
            return Ok(ignored);
        }
        if let Some(ignored) = forge_tests::gate(needs)? {
            return Ok(ignored);
        }
        timed(name, f).map(|()| Completion::Completed)
    })
}

/// A test with the backends it needs that also runs an installed program
/// (`name` as FORGE_REQUIRE spells it, and its path).
fn trial_with_program(
    name: &'static str,
    needs: &'static [&'static str],
    program: Program,
    f: TestFn,
) -> Trial {
    trial_with_programs(name, needs, vec![program], f)
}

/// An installed program a test runs: its name as FORGE_REQUIRE spells it, and its path.
type Program = (&'static str, fn() -> std::path::PathBuf);

/// Like [`trial_with_program`], for a test that runs several programs.
fn trial_with_programs(
    name: &'static str,
    needs: &'static [&'static str],
    programs: Vec<Program>,
    f: TestFn,
) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(ignored) =
            forge_tests::gate_kernel_subset(AGENT_SIDE.contains(&name), LSM_INDEPENDENT.contains(&name))
        {
            return Ok(ignored);
        }
        if let Some(ignored) = forge_tests::gate(needs)? {
            return Ok(ignored);
        }
        for (program, path) in programs {
            if let Some(ignored) = forge_tests::gate_program(program, &path())? {
                return Ok(ignored);
            }
        }
        timed(name, f).map(|()| Completion::Completed)
    })
}

fn main() {
    forge_agent::workload::maybe_perform_from_env();
    agent_restart::maybe_run_agent_child();
    let mut args = Arguments::from_args();
    // Tests load programs and create cgroups; one at a time keeps them apart.
    args.test_threads.get_or_insert(1);
    let tests = vec![
        trial("cgroup_connect4_deny_and_allow", &["cgroup"], net::connect4),
        trial("cgroup_bind4_and_ipv6", &["cgroup"], net::bind_and_ipv6),
        trial("cgroup_sendmsg_udp", &["cgroup"], net::sendmsg_udp),
        trial(
            "net_unspecified_destination_is_loopback",
            &["cgroup"],
            net::unspecified_destination_is_loopback,
        ),
        trial("net_connected_udp_is_decided_as_sendto", &["cgroup"], net::connected_udp_is_decided_as_sendto),
        trial("net_raw_sockets_are_a_class_decided_at_creation", &["cgroup"], net::raw_sockets_are_a_class),
        trial("syscall_deny_kills_caller", &["tracepoint"], process::syscall_kill),
        trial("syscall_rules_cover_i386_int80", &["tracepoint"], process::syscall_rules_cover_i386),
        trial(
            "syscall_i386_numbers_are_not_x86_64_numbers",
            &["tracepoint"],
            process::i386_numbers_are_not_x86_64_numbers,
        ),
        trial_maybe("syscall_rules_cover_x32", &["tracepoint"], process::syscall_rules_cover_x32),
        trial("exec_deny_tracepoint_fallback", &["tracepoint"], process::exec_fallback),
        trial(
            "exec_fallback_decides_the_loaded_file_not_the_execve_string",
            &["tracepoint"],
            process::exec_fallback_decides_the_loaded_file,
        ),
        trial("monitor_mode_counts_and_reports", &["cgroup", "tracepoint"], process::monitor_mode),
        trial("process_events_exec_and_exit", &["tracepoint"], process::process_events),
        trial("pinned_state_survives_agent_sigkill", &["cgroup"], agent_restart::survives_sigkill),
        trial("hot_swap_never_mixes_generations_or_opens_a_gap", &["cgroup"], hotswap::hot_swap),
        trial("policy_apply_through_the_api", &["cgroup"], api::apply_through_api),
        trial("signed_bundles_only_in_strict_mode", &["cgroup"], api::signed_apply_in_strict_mode),
        trial(
            "quarantine_after_learning_scoring_and_release",
            &["cgroup", "tracepoint"],
            quarantine::learn_score_quarantine_release,
        ),
        trial(
            "quarantine_redzone_keeps_running_without_network",
            &["cgroup", "tracepoint"],
            quarantine::redzone_keeps_running_without_network,
        ),
        trial(
            "benign_long_run_is_not_escalated",
            &["cgroup", "tracepoint"],
            quarantine::benign_long_run_is_not_escalated,
        ),
        trial(
            "shipped_policies_govern_their_workloads",
            &["cgroup", "tracepoint"],
            shipped::shipped_profiles,
        ),
        trial(
            "differential_evaluator_vs_kernel_cgroup_tracepoint",
            &["cgroup", "tracepoint"],
            differential::host,
        ),
        trial(
            "event_storm_drops_counted_per_cgroup_enforcement_intact",
            &["cgroup", "tracepoint"],
            storm::storm,
        ),
        trial(
            "event_storm_lost_events_in_status_and_trace",
            &["cgroup", "tracepoint"],
            lost::daemon_reports_lost_events,
        ),
        trial_with_program(
            "metrics_scraped_by_prometheus",
            &["cgroup"],
            ("prometheus", || std::path::PathBuf::from(metrics::PROMETHEUS)),
            metrics::scraped_by_prometheus,
        ),
        trial_with_program(
            "agent_sigterm_leaves_enforcement_pinned",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            sigterm::sigterm_leaves_enforcement_pinned,
        ),
        trial_with_programs(
            "top_live_view_in_tmux",
            &["cgroup"],
            vec![("tmux", || std::path::PathBuf::from(top::TMUX)), ("forge", sigterm::forge_binary)],
            top::live_view_in_tmux,
        ),
        trial("otlp_export_over_grpc_decoded_by_a_real_receiver", &["cgroup"], otlp::over_grpc),
        trial("otlp_export_over_http_decoded_by_a_real_receiver", &["cgroup"], otlp::over_http),
        trial("otlp_collector_down_counts_errors_enforcement_goes_on", &["cgroup"], otlp::collector_down),
        trial_with_programs(
            "capsule_c_program_under_the_gate_recorded_and_replayed",
            &[],
            vec![("clang", || std::path::PathBuf::from(capsule::CLANG)), ("forge", sigterm::forge_binary)],
            capsule::c_program_under_the_gate,
        ),
        trial_with_programs(
            "capsule_c_program_as_a_wasi_component_under_the_gate",
            &[],
            vec![("clang", || std::path::PathBuf::from(capsule::CLANG)), ("forge", sigterm::forge_binary)],
            capsule_component::c_component_under_the_gate,
        ),
        trial_with_program(
            "capsule_run_through_the_agent_kernel_backs_up_the_gate",
            &["cgroup"],
            ("forge", sigterm::forge_binary),
            capsule_api::kernel_backs_up_the_gate,
        ),
        trial(
            "doctor_checks_pinned_programs_and_traces",
            &["cgroup", "tracepoint"],
            doctor::integrity_of_pins_and_traces,
        ),
        trial_with_program(
            "doctor_reports_whether_the_policy_in_force_is_signed",
            &["cgroup"],
            ("forge", sigterm::forge_binary),
            doctor::policy_in_force_signed,
        ),
        fleet_trial(
            "fleet_bundles_reach_three_agents_survive_a_bus_partition_replays_refused",
            fleet::bundles_partition_and_replay,
        ),
        fleet_trial(
            "fleet_quarantine_refused_on_other_nodes_forged_records_refused",
            fleet::quarantine_propagates_forgeries_refused,
        ),
        fleet_trial(
            "fleet_bundle_names_compose_older_bundle_under_a_new_name_refused",
            fleet::bundle_names_compose_rollback_refused,
        ),
        fleet_trial(
            "fleet_quarantine_survives_bus_purge_and_restart_release_needs_k_of_n",
            fleet::quarantine_kept_across_restart_release_k_of_n,
        ),
        trial(
            "subtree_child_cgroups_are_governed",
            &["cgroup", "tracepoint"],
            contain::child_cgroups_are_governed,
        ),
        trial(
            "subtree_kubepods_layout_governed_from_the_top",
            &["cgroup", "tracepoint"],
            contain::kubepods_layout,
        ),
        trial(
            "subtree_delegated_service_sub_cgroups_governed",
            &["cgroup", "tracepoint"],
            contain::delegated_service_layout,
        ),
        trial("subtree_threaded_cgroup_governed", &["cgroup", "tracepoint"], contain::threaded_cgroups),
        trial(
            "escape_move_self_out_killed_at_attach",
            &["cgroup", "tracepoint"],
            contain::move_self_out_is_killed,
        ),
        trial_maybe(
            "escape_move_child_out_killed_before_it_runs",
            &["cgroup", "tracepoint"],
            contain::move_child_out_is_killed,
        ),
        trial_maybe(
            "escape_clone3_into_cgroup_killed_at_fork",
            &["cgroup", "tracepoint"],
            contain::clone3_out_is_killed,
        ),
        trial_with_program(
            "recreated_cgroup_governed_again_from_the_kernel_event_quarantine_kept",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::recreated_cgroup_governed_again,
        ),
        trial_with_program(
            "selector_governs_cgroups_as_they_appear",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::selector_governs_new_children,
        ),
        trial_with_program(
            "api_governed_callers_cannot_change_the_agent",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::governed_callers_cannot_change_the_agent,
        ),
        trial_with_program(
            "restart_resumes_workloads_quarantine_traces_and_applies",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::restart_resumes_everything,
        ),
        trial_with_program(
            "escaped_processes_and_their_children_end_dead",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::escaped_processes_end_dead,
        ),
        trial_with_program(
            "links_held_repinned_reattached_and_checked_by_doctor",
            &["cgroup", "tracepoint"],
            ("forge", sigterm::forge_binary),
            lifecycle::links_held_repinned_and_checked,
        ),
        Trial::ignorable_test(
            "probe_reports_expected_backends_unavailable",
            forge_tests::check_expected_unavailable,
        ),
        trial("lsm_differential_evaluator_vs_kernel", &["lsm", "lsm-paths"], differential::lsm),
        trial("lsm_exec_deny", &["lsm", "lsm-paths"], lsm::exec_deny),
        trial("lsm_exec_anonymous_memfd_and_deleted", &["lsm", "lsm-paths"], lsm::exec_anonymous),
        trial("lsm_file_open_deny_resolves_paths", &["lsm", "lsm-paths"], lsm::file_open),
        trial(
            "lsm_syscall_denies_refused_before_the_effect",
            &["lsm"],
            lsm::syscall_denies_refused_before_the_effect,
        ),
        trial("lsm_path_rules_guard_mounts_chroot_userns", &["lsm"], lsm::path_rules_guard_what_paths_mean),
        trial("lsm_socket_connect_and_bind_deny", &["lsm"], lsm::socket),
        trial("lsm_net_unix_sockets_by_path", &["lsm"], lsm::unix_sockets),
        trial("lsm_self_protection", &["lsm"], lsm::self_protection),
        trial(
            "lsm_containment_ways_out_refused_before_the_effect",
            &["lsm", "cgroup", "tracepoint"],
            lsm_contain::ways_out_refused,
        ),
        trial(
            "lsm_containment_cgroup_files_outside_refused",
            &["lsm", "cgroup", "tracepoint"],
            lsm_contain::cgroup_files_outside_refused,
        ),
        trial(
            "lsm_self_protection_every_signal_route_pins_and_bpffs",
            &["lsm", "cgroup", "tracepoint"],
            lsm_contain::agent_out_of_reach,
        ),
    ];
    // A misspelt name in a subset list would silently run a test everywhere.
    for listed in AGENT_SIDE.iter().chain(LSM_INDEPENDENT) {
        assert!(tests.iter().any(|t| t.name() == *listed), "{listed:?} in a subset list names no test");
    }
    libtest_mimic::run(&args, tests).exit();
}

/// A fleet test: the cgroup backend, nats-server and the forge binary.
fn fleet_trial(name: &'static str, f: TestFn) -> Trial {
    trial_with_programs(
        name,
        &["cgroup"],
        vec![
            ("nats-server", || std::path::PathBuf::from(forge_tests::fleet::NATS_SERVER)),
            ("forge", sigterm::forge_binary),
        ],
        f,
    )
}

/// A TCP listener on `addr` (port 0 = any) that accepts and drops
/// connections in the background.
pub(crate) fn listener(addr: &str) -> Result<SocketAddr, Failed> {
    let l = TcpListener::bind(addr).map_err(forge_tests::fail)?;
    let local = l.local_addr().map_err(forge_tests::fail)?;
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    Ok(local)
}

/// A port nothing listens on (bound briefly, then released).
pub(crate) fn free_port(addr: &str) -> Result<u16, Failed> {
    let l = TcpListener::bind(addr).map_err(forge_tests::fail)?;
    Ok(l.local_addr().map_err(forge_tests::fail)?.port())
}

/// The one event matching `pred`, or a failure listing what arrived.
pub(crate) fn find<'a>(
    events: &'a [DecisionEvent],
    what: &str,
    pred: impl Fn(&DecisionEvent) -> bool,
) -> Result<&'a DecisionEvent, Failed> {
    let matching: Vec<_> = events.iter().filter(|e| pred(e)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no event for {what}; got:\n{}", list(events)).into()),
        many => Err(format!("{} events for {what}, expected one:\n{}", many.len(), list(events)).into()),
    }
}

fn list(events: &[DecisionEvent]) -> String {
    events.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}
