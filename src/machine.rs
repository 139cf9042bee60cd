//! `--report`'s machine-code estimates (`mixc explain --report`, `mixc
//! build --report`): for each kernel of a plan, the SASS of the kernel the
//! bundle runs for it (`mixc_backends::sass`) and the plan's count of its
//! work, as tensor-, issue- and memory-bound times on the profile's device
//! ([`mixc_backends::sass::estimate`]), beside the plan's roofline floor.

use mixc_backends::{sass, KernelReport};
use mixc_opt::{Plan, Profile};
use mixc_runtime::bundle::Manifest;

/// One plan kernel's estimate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub id: usize,
    pub name: String,
    /// The bundle entry whose SASS stands for it: of the kernel's entries,
    /// the one with the most tensor work in its hot loop (else the first).
    pub entry: String,
    /// The plan's estimate: its roofline floor on the profile.
    pub floor_seconds: f64,
    pub estimate: sass::Estimate,
}

/// The estimates of `plan`'s kernels from the SASS in `reports` of the
/// bundle described by `m`, on `profile`'s device; empty where the
/// profile gives no SM count or clock (a CPU).
pub fn rows(plan: &Plan, reports: &[KernelReport], m: &Manifest, profile: &Profile) -> Vec<Row> {
    let (Some(sms), Some(clock_hz)) = (profile.sms, profile.clock_hz) else {
        return Vec::new();
    };
    let sm = format!("sm_{}", profile.sm.unwrap_or(90));
    let dev = sass::Device {
        sm: &sm,
        sms,
        clock_hz,
        tensor_flops: profile.peak_flops,
        elementwise_flops: profile.elementwise_flops,
        bandwidth: profile.bandwidth,
        launch_seconds: profile.launch_seconds,
    };
    plan.kernels
        .iter()
        .filter_map(|k| {
            let (entry, machine) = m
                .kernels
                .iter()
                .filter(|e| e.id == k.id)
                .filter_map(|e| reports.iter().find(|r| r.name == e.entry))
                .filter_map(|r| r.sass.as_ref().map(|s| (r.name.clone(), s)))
                .rev()
                .max_by_key(|(_, s)| s.hot_loop.as_ref().map_or(0, |l| l.tensor_cycles))?;
            let w = &k.work;
            let estimate = sass::estimate(
                machine,
                &m.target,
                &dev,
                (
                    w.matrix_flops,
                    w.other_flops,
                    w.bytes,
                    w.steps * profile.scan_step_seconds,
                    w.launches,
                ),
            );
            Some(Row {
                id: k.id,
                name: k.name.clone(),
                entry,
                floor_seconds: k.seconds,
                estimate,
            })
        })
        .collect()
}

fn time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// The table of `rows`, with a header naming the device and what the
/// columns mean.
pub fn render(rows: &[Row], profile: &Profile, plan: &Plan) -> String {
    let mut out = String::new();
    let sizes: Vec<String> = plan.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!(
        "machine-code estimate on {} ({} SMs at {:.2} GHz, {:.0} TFLOP/s tensor, {:.1} TB/s) at {}:\n",
        profile.name,
        profile.sms.unwrap_or(0),
        profile.clock_hz.unwrap_or(0.0) / 1e9,
        profile.peak_flops / 1e12,
        profile.bandwidth / 1e12,
        sizes.join(" ")
    ));
    out.push_str("  (floor: the plan's roofline; compute: its matrix FLOPs at the tensor rate of the code's instructions, other FLOPs at the elementwise rate; issue: its nominal tensor time over the hot loop's issue-bound ceiling; memory: its bytes at the bandwidth; estimate: the largest (scan steps too) plus launches: a bound from the machine code, not a measurement)\n");
    out.push_str(&format!(
        "  {:<6} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:<6}\n",
        "kernel", "value", "floor", "compute", "issue", "memory", "estimate", "TFLOP/s", "bound"
    ));
    for r in rows {
        let e = &r.estimate;
        out.push_str(&format!(
            "  {:<6} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.1} {:<6}\n",
            r.id,
            r.name,
            time(r.floor_seconds),
            time(e.compute_seconds),
            e.issue_seconds.map_or_else(|| "-".into(), time),
            time(e.memory_seconds),
            time(e.seconds),
            e.flops_per_second / 1e12,
            e.bound
        ));
    }
    if rows.is_empty() {
        out.push_str(
            "  (no kernel's SASS was read: is nvdisasm installed? run scripts/setup.sh)\n",
        );
    }
    out
}
